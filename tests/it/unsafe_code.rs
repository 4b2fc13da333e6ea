//! Every `unsafe` block, function and impl in `src/` and `examples/` carries its safety
//! argument: a `// SAFETY:` comment (or a `# Safety` doc section for an `unsafe fn`) on the line
//! itself or in the comments and attributes directly above it (docs/reliability.md).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line: comments and string literals removed.
fn code(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_str = false,
                _ => {}
            }
        } else if c == '"' {
            in_str = true;
        } else if c == '/' && chars.peek() == Some(&'/') {
            break;
        } else {
            out.push(c);
        }
    }
    out
}

fn has_unsafe_keyword(code: &str) -> bool {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == "unsafe")
}

/// `path:line: text` of every `unsafe` without a safety argument.
fn unargued(path: &Path, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut bad = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !has_unsafe_keyword(&code(line)) || line.contains("SAFETY") {
            continue;
        }
        let argued = lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("//") || l.starts_with("#["))
            .any(|l| l.contains("SAFETY") || l.contains("# Safety"));
        if !argued {
            bad.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
        }
    }
    bad
}

#[test]
fn the_checker_finds_an_unargued_block() {
    let p = Path::new("x.rs");
    let src = "fn f() {\n    // reads a pointer\n    let x = unsafe { *p };\n}\n";
    assert_eq!(unargued(p, src).len(), 1);
    let src = "// SAFETY: p is valid.\nlet x = unsafe { *p };\n/// # Safety\n/// AVX2.\n#[target_feature(enable = \"avx2\")]\nunsafe fn g() {}\nlet s = \"unsafe\"; // not code\n";
    assert!(unargued(p, src).is_empty());
}

#[test]
fn every_unsafe_carries_its_safety_argument() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("examples"), &mut files);
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut bad = Vec::new();
    let mut seen = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        seen += text
            .lines()
            .filter(|l| has_unsafe_keyword(&code(l)))
            .count();
        bad.extend(unargued(f.strip_prefix(root).unwrap(), &text));
    }
    assert!(
        seen > 20,
        "only {seen} unsafe lines found: is the scan broken?"
    );
    assert!(
        bad.is_empty(),
        "unsafe without a safety argument:\n{}",
        bad.join("\n")
    );
}
