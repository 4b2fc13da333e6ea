//! A structured mutation fuzzer for every parser engram runs on other people's files:
//!
//!     cargo run --release --example fuzz -- TARGET [--runs N] [--seconds S] [--seed K]
//!     cargo run --release --example fuzz -- TARGET --replay FILE   # one saved input
//!     scripts/fuzz.sh [SECONDS]          # every target, one after another, with a summary
//!
//! Targets (seeds from the repository's real files; `gguf-real` and `tokenizer-json` need
//! `scripts/fetch-models.sh`):
//!
//! | target | parser | seeds |
//! |---|---|---|
//! | `gguf` | GGUF header, metadata, tensor table + size checks, `ModelConfig` from the metadata, the tokenizer from the metadata | `tests/fixtures/*/model.gguf` |
//! | `gguf-real` | the same | the fetched models' GGUF headers (real vocabularies and merges) |
//! | `safetensors` | a folder's `model.safetensors` header through the full model load | `tests/fixtures/{llama,gemma2,qwen3}` |
//! | `npy` | `.npy` header + size check + read | `notebooks-data/icl-cmr/*.npy` |
//! | `config` | `config.json` → `ModelConfig` (incl. 0 heads, indivisible widths, huge sizes) | `tests/fixtures/*/config.json` |
//! | `suite` | suite TOML → plan | `probes/*.toml`, `tests/fixtures/suites/*.toml` |
//! | `sae-cfg` | an SAE folder's `cfg.json` (+ its weights) → `Sae::load` | `tests/fixtures/saelens_jumprelu` |
//! | `tokenizer-json` | `tokenizer.json` + `tokenizer_config.json` → `Tokenizer` | the fetched models' tokenizers, cut to 400 tokens |
//!
//! Each execution mutates a seed (bit flips, interesting bytes and integers — 0, 1, 2³¹, 2³²−1,
//! 2⁶³ — at random offsets, truncation, chunk duplication and deletion, for text also numbers
//! replaced by extreme ones and lines duplicated or dropped) and runs the parser. A parser may
//! return any error; a panic is a crash (the input is saved under `target/fuzz/crashes/`), an
//! allocation over `ENGRAM_FUZZ_MAX_ALLOC` bytes (default 1 GiB) aborts the process naming its
//! size, and an execution over 10 s aborts it as a hang — in both cases the input is saved to
//! `target/fuzz/TARGET.current`. Exit code 0 means no crash. Path-based parsers read their
//! input from files under `/dev/shm` (else `target/fuzz/scratch`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::Device;

/// The system allocator with a cap per allocation: a parser asking for more is a bug.
struct Capped;

static MAX_ALLOC: AtomicUsize = AtomicUsize::new(1 << 30);

/// The input being executed and where to save it if the process must abort.
static CURRENT: std::sync::Mutex<(Vec<u8>, Option<PathBuf>)> =
    std::sync::Mutex::new((Vec::new(), None));

/// Save the current input (for an abort: a huge allocation or a hang).
fn save_current() {
    if let Ok(c) = CURRENT.try_lock() {
        if let Some(p) = &c.1 {
            let _ = std::fs::write(p, &c.0);
        }
    }
}

// SAFETY: every allocation is forwarded to the system allocator unchanged (or the process
// aborts), so `Capped` keeps `GlobalAlloc`'s contract exactly as `System` does.
unsafe impl GlobalAlloc for Capped {
    /// # Safety
    /// `GlobalAlloc::alloc`'s contract (a non-zero-sized layout).
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC.load(Ordering::Relaxed) {
            // No unwinding out of an allocator: report and abort (the input is on disk).
            let msg = format!("fuzz: allocation of {} bytes\n", layout.size());
            let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
            save_current();
            std::process::abort();
        }
        // SAFETY: forwarded unchanged to the system allocator, whose contract the caller meets.
        unsafe { System.alloc(layout) }
    }
    /// # Safety
    /// `GlobalAlloc::dealloc`'s contract.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (alloc above forwards there).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;

/// xorshift64*: a reproducible stream from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    u64::MAX,
];
const NUMBERS: [&str; 10] = [
    "0",
    "-1",
    "1",
    "4294967296",
    "18446744073709551616",
    "1e308",
    "-1e308",
    "NaN",
    "3.5",
    "99999999999",
];

/// One mutation of `seed`; `hot` bytes at the start get most of the binary mutations (headers).
fn mutate(seed: &[u8], text: bool, hot: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = v.len().max(1);
        let span = if rng.below(10) < 9 { hot.min(len) } else { len };
        let at = rng.below(span);
        match rng.below(if text { 9 } else { 6 }) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = INTERESTING[rng.below(INTERESTING.len())] as u8;
            }
            2 => {
                let x = INTERESTING[rng.below(INTERESTING.len())];
                let w = [1usize, 2, 4, 8][rng.below(4)];
                let bytes = x.to_le_bytes();
                for (i, b) in bytes.iter().take(w).enumerate() {
                    if let Some(slot) = v.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 => v.truncate(rng.below(v.len() + 1)),
            4 if !v.is_empty() => {
                let a = at.min(v.len() - 1);
                let n = 1 + rng.below(64.min(v.len() - a));
                let chunk = v[a..a + n].to_vec();
                let to = rng.below(v.len());
                v.splice(to..to, chunk);
            }
            5 if !v.is_empty() => {
                let a = at.min(v.len() - 1);
                let n = 1 + rng.below(64.min(v.len() - a));
                v.drain(a..a + n);
            }
            6 => {
                // Replace a number with an extreme one.
                let s = String::from_utf8_lossy(&v).into_owned();
                let starts: Vec<usize> = s
                    .char_indices()
                    .filter(|(i, c)| {
                        c.is_ascii_digit()
                            && (*i == 0 || !s.as_bytes()[i - 1].is_ascii_alphanumeric())
                    })
                    .map(|(i, _)| i)
                    .collect();
                if !starts.is_empty() {
                    let a = starts[rng.below(starts.len())];
                    let end = s[a..]
                        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
                        .map_or(s.len(), |e| a + e);
                    let mut out = s[..a].to_string();
                    out.push_str(NUMBERS[rng.below(NUMBERS.len())]);
                    out.push_str(&s[end..]);
                    v = out.into_bytes();
                }
            }
            7 => {
                // Duplicate or drop a line.
                let s = String::from_utf8_lossy(&v).into_owned();
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    if rng.below(2) == 0 {
                        lines.insert(i, lines[i]);
                    } else {
                        lines.remove(i);
                    }
                    v = lines.join("\n").into_bytes();
                }
            }
            _ => {
                let ch = [b'{', b'}', b'[', b']', b'"', b',', b':', b'=', b'\n', b'0'];
                v.insert(at.min(v.len()), ch[rng.below(ch.len())]);
            }
        }
    }
    v
}

/// A parser under test: any error is fine, a panic is a crash.
type Parser = Box<dyn Fn(&[u8]) -> engram::Result<()>>;

struct Target {
    name: &'static str,
    text: bool,
    /// Bytes at the start that get most mutations.
    hot: usize,
    seeds: Vec<Vec<u8>>,
    /// Run the parser on one input; errors are fine.
    run: Parser,
}

fn read_all(paths: impl IntoIterator<Item = PathBuf>) -> Vec<Vec<u8>> {
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok())
        .collect()
}

fn glob(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The header (up to the tensor data) of a fetched model's GGUF, if there is one.
fn real_gguf_headers() -> Vec<Vec<u8>> {
    let dir = std::env::var_os("ENGRAM_MODELS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/engram/models"))
        });
    let Some(dir) = dir else { return vec![] };
    let mut out = vec![];
    for p in glob(&dir, ".gguf") {
        let Ok(mut f) = std::fs::File::open(&p) else {
            continue;
        };
        let Ok(c) = candle_core::quantized::gguf_file::Content::read(&mut f) else {
            continue;
        };
        let n = c.tensor_data_offset as usize;
        if n < (64 << 20) {
            if let Ok(bytes) = std::fs::read(&p).map(|b| b[..n.min(b.len())].to_vec()) {
                out.push(bytes);
            }
        }
    }
    out
}

fn targets(root: &Path, work: &Path) -> Vec<Target> {
    let fixtures = root.join("tests/fixtures");
    let fixture_dirs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    let ggufs = read_all(fixture_dirs.iter().map(|d| d.join("model.gguf")));
    let real_ggufs = real_gguf_headers();
    let configs = read_all(fixture_dirs.iter().map(|d| d.join("config.json")));
    let mut suites = read_all(glob(&root.join("probes"), ".toml"));
    suites.extend(read_all(glob(&fixtures.join("suites"), ".toml")));
    let npys = read_all(glob(&root.join("notebooks-data/icl-cmr"), ".npy"));
    // tokenizer.json seeds: the fetched models' tokenizers (from their GGUF headers) cut down
    // to their first 400 tokens and the merges among them, so an execution takes microseconds.
    let mut tokenizers = vec![];
    for (i, g) in real_ggufs.iter().enumerate() {
        let content = engram::model::weights::read_content(&mut Cursor::new(g), DATA_BEYOND);
        let tok = content.and_then(|c| engram::model::Tokenizer::from_gguf(&c));
        let dir = work.join(format!("tok-seed-{i}"));
        if let Ok(t) = tok {
            if t.save_hf_dir(&dir).is_ok() {
                tokenizers.extend(
                    read_all([dir.join("tokenizer.json")])
                        .into_iter()
                        .filter_map(small_tokenizer),
                );
            }
        }
    }
    // Path-based parsers get their input through files in `work`.
    let st_dir = work.join("st");
    let sae_dir = work.join("sae");
    let tok_dir = work.join("tok");
    let npy_path = work.join("input.npy");
    for d in [&st_dir, &sae_dir, &tok_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let st_fixtures: Vec<PathBuf> = ["llama", "gemma2", "qwen3"]
        .iter()
        .map(|n| fixtures.join(n))
        .collect();
    let st_seeds = read_all(st_fixtures.iter().map(|d| d.join("model.safetensors")));
    // One config for all safetensors seeds: the llama fixture's, so other seeds exercise the
    // shape checks.
    std::fs::copy(
        st_fixtures[0].join("config.json"),
        st_dir.join("config.json"),
    )
    .unwrap();
    let sae_src = fixtures.join("saelens_jumprelu");
    let sae_seeds = read_all([sae_src.join("cfg.json")]);
    if let Ok(w) = std::fs::read(sae_src.join("sae_weights.safetensors")) {
        std::fs::write(sae_dir.join("sae_weights.safetensors"), w).unwrap();
    }
    std::fs::write(
        tok_dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}"#,
    )
    .unwrap();

    vec![
        Target {
            name: "gguf",
            text: false,
            hot: 64 << 10,
            seeds: ggufs,
            run: Box::new(gguf_header),
        },
        Target {
            name: "gguf-real",
            text: false,
            hot: 64 << 10,
            seeds: real_ggufs,
            // Headers only: their tensor data lies beyond (not fuzzed here; `gguf` is).
            run: Box::new(|b| gguf_header_in(b, DATA_BEYOND)),
        },
        Target {
            name: "safetensors",
            text: false,
            hot: 8 << 10,
            seeds: st_seeds,
            run: Box::new(move |b| {
                put(st_dir.join("model.safetensors"), b)?;
                let opts = engram::model::LoadOptions::default();
                engram::model::Model::load(st_dir.to_str().unwrap(), &opts).map(|_| ())
            }),
        },
        Target {
            name: "npy",
            text: false,
            hot: 256,
            seeds: npys,
            run: Box::new(move |b| {
                put(&npy_path, b)?;
                engram::probes::cmr::read_npy_f64(&npy_path).map(|_| ())
            }),
        },
        Target {
            name: "config",
            text: true,
            hot: 1 << 20,
            seeds: configs,
            run: Box::new(|b| {
                let v: serde_json::Value =
                    serde_json::from_slice(b).map_err(|e| engram::Error::msg(e.to_string()))?;
                engram::model::ModelConfig::from_hf_json(&v).map(|_| ())
            }),
        },
        Target {
            name: "suite",
            text: true,
            hot: 1 << 20,
            seeds: suites,
            run: Box::new(|b| {
                let s = engram::batch::parse_suite(&String::from_utf8_lossy(b))?;
                let steps = engram::batch::plan(&s, Path::new("run"))?;
                for n in [1, 3] {
                    let _ = engram::batch::shard::assign(&steps, n);
                }
                Ok(())
            }),
        },
        Target {
            name: "sae-cfg",
            text: true,
            hot: 1 << 20,
            seeds: sae_seeds,
            run: Box::new(move |b| {
                put(sae_dir.join("cfg.json"), b)?;
                engram::probes::sae::Sae::load(&sae_dir, &Device::Cpu).map(|_| ())
            }),
        },
        Target {
            name: "tokenizer-json",
            text: true,
            hot: 1 << 20,
            seeds: tokenizers,
            run: Box::new(move |b| {
                put(tok_dir.join("tokenizer.json"), b)?;
                let t = engram::model::Tokenizer::from_hf_dir(&tok_dir)?;
                let _ = t.encode("The Eiffel Tower is in", true);
                Ok(())
            }),
        },
    ]
}

/// A tokenizer.json cut down to its first 400 ids (vocabulary, added tokens) and the merges
/// among them.
fn small_tokenizer(json: Vec<u8>) -> Option<Vec<u8>> {
    const KEEP: u64 = 400;
    let mut v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let model = v.get_mut("model")?;
    let vocab = model.get_mut("vocab")?.as_object_mut()?;
    vocab.retain(|_, id| id.as_u64().is_some_and(|i| i < KEEP));
    let kept: std::collections::HashSet<String> = vocab.keys().cloned().collect();
    if let Some(merges) = model.get_mut("merges").and_then(|m| m.as_array_mut()) {
        merges.retain(|m| {
            let parts: Vec<String> = match m {
                serde_json::Value::String(s) => s.split(' ').map(String::from).collect(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                _ => vec![],
            };
            parts.len() == 2
                && parts.iter().all(|p| kept.contains(p))
                && kept.contains(&parts.concat())
        });
    }
    if let Some(added) = v.get_mut("added_tokens").and_then(|a| a.as_array_mut()) {
        added.retain(|t| {
            t.get("id")
                .and_then(|i| i.as_u64())
                .is_some_and(|i| i < KEEP)
        });
    }
    serde_json::to_vec_pretty(&v).ok()
}

/// The file length the real models' header seeds are checked against (their data is not
/// included).
const DATA_BEYOND: u64 = 1 << 40;

/// GGUF header + tensor table checks, the config and the tokenizer from the metadata.
fn gguf_header(b: &[u8]) -> engram::Result<()> {
    gguf_header_in(b, b.len() as u64)
}

fn gguf_header_in(b: &[u8], len: u64) -> engram::Result<()> {
    let content = engram::model::weights::read_content(&mut Cursor::new(b), len)?;
    let cfg = engram::model::weights::config_from_gguf(&content);
    let tok = engram::model::Tokenizer::from_gguf(&content);
    if let (Ok(_), Ok(t)) = (cfg, tok) {
        let _ = t.encode("The Eiffel Tower is in", true);
    }
    Ok(())
}

fn put(path: impl AsRef<Path>, bytes: &[u8]) -> engram::Result<()> {
    let path = path.as_ref();
    std::fs::write(path, bytes).map_err(|e| engram::Error::io(path, e))
}

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = root.join("target/fuzz");
    // The path-based parsers' inputs go through files: in memory where there is a tmpfs.
    let scratch = match Path::new("/dev/shm").is_dir() {
        true => PathBuf::from(format!("/dev/shm/engram-fuzz-{}", std::process::id())),
        false => work.join("scratch"),
    };
    let crashes = work.join("crashes");
    std::fs::create_dir_all(&crashes).unwrap();
    if let Some(cap) = std::env::var("ENGRAM_FUZZ_MAX_ALLOC")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        MAX_ALLOC.store(cap, Ordering::Relaxed);
    }
    let all = targets(&root, &scratch);
    let name = args.first().map(String::as_str).unwrap_or("");
    let Some(t) = all.iter().find(|t| t.name == name) else {
        let names: Vec<&str> = all.iter().map(|t| t.name).collect();
        eprintln!(
            "usage: fuzz TARGET [--runs N] [--seconds S] [--seed K]; targets: {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    // `--replay FILE`: run one saved input, panics printed with their location.
    if let Some(i) = args.iter().position(|a| a == "--replay") {
        let input = std::fs::read(&args[i + 1]).expect("--replay FILE");
        println!("{:?}", (t.run)(&input).map_err(|e| e.to_string()));
        return;
    }
    let runs: u64 = arg(&args, "--runs", 1_000_000);
    let seconds: f64 = arg(&args, "--seconds", 60.0);
    let seed: u64 = arg(&args, "--seed", 1);
    if t.seeds.is_empty() {
        eprintln!("fuzz {}: no seed files found", t.name);
        std::process::exit(2);
    }
    // Panics are counted, not printed one by one.
    std::panic::set_hook(Box::new(|_| {}));
    let current = work.join(format!("{}.current", t.name));
    let _ = std::fs::remove_file(&current);
    CURRENT.lock().unwrap().1 = Some(current.clone());
    // The watchdog: an execution over 10 s is a hang.
    static STARTED_MS: AtomicU64 = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = STARTED_MS.load(Ordering::Relaxed);
        if s != 0 && t0.elapsed().as_millis() as u64 > s + 10_000 {
            eprintln!("fuzz: an execution ran over 10 s (hang)");
            save_current();
            std::process::abort();
        }
    });
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let (mut n, mut errors, mut crashed) = (0u64, 0u64, 0u64);
    let mut first_crash = None;
    // The seeds themselves first, unmutated.
    let mut queue: Vec<Vec<u8>> = t.seeds.clone();
    while n < runs && t0.elapsed().as_secs_f64() < seconds {
        let input = queue.pop().unwrap_or_else(|| {
            let s = &t.seeds[rng.below(t.seeds.len())];
            mutate(s, t.text, t.hot, &mut rng)
        });
        {
            let mut c = CURRENT.lock().unwrap();
            c.0.clear();
            c.0.extend_from_slice(&input);
        }
        STARTED_MS.store(t0.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(&input)));
        STARTED_MS.store(0, Ordering::Relaxed);
        match r {
            Ok(Ok(())) => {}
            Ok(Err(_)) => errors += 1,
            Err(p) => {
                crashed += 1;
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let file = crashes.join(format!("{}-{n}.bin", t.name));
                std::fs::write(&file, &input).unwrap();
                if first_crash.is_none() {
                    first_crash = Some(format!("{msg} ({})", file.display()));
                }
            }
        }
        n += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "fuzz {}: {n} executions in {secs:.0} s ({:.0}/s), {errors} rejected with an error, {crashed} crashes{}",
        t.name,
        n as f64 / secs,
        first_crash.map_or(String::new(), |c| format!("; first: {c}"))
    );
    let _ = std::fs::remove_dir_all(&scratch);
    std::process::exit(if crashed > 0 { 1 } else { 0 });
}
