//! Pretrained SAEs by release name, like SAELens's `SAE.from_pretrained(release, sae_id)`:
//! `RELEASE/SAE_ID` (the id may itself contain slashes) is looked up in a small registry
//! (`pretrained_saes.toml`, entries taken from SAELens's `pretrained_saes.yaml`), its files are
//! found in the hf-hub cache exactly as models are ([`crate::model::source`]: HF_HUB_CACHE /
//! HF_HOME, HF_HUB_OFFLINE; fetched through hf-hub when online), and each source's own layout is
//! converted as SAELens's loaders do ([`formats`]).

pub mod formats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::Sae;
use crate::model::source;
use crate::{Error, Result};

/// The registry compiled into engram.
pub const REGISTRY_TOML: &str = include_str!("../pretrained_saes.toml");

/// How a release stores one SAE on the Hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Gemma Scope 2: `FOLDER/params.safetensors` (`w_enc [d, n]`, `w_dec [n, d]`, `b_enc`,
    /// `b_dec`, `threshold`), optional `FOLDER/config.json`.
    #[serde(rename = "gemma_scope_2")]
    GemmaScope2,
    /// Gemma Scope: `FOLDER/params.npz` (`W_enc [d, n]`, `W_dec [n, d]`, `b_enc`, `b_dec`,
    /// `threshold`).
    GemmaScopeNpz,
    /// Llama Scope: `FOLDER/hyperparams.json` + `FOLDER/checkpoints/final.safetensors`.
    LlamaScope,
    /// SAELens: `FOLDER/cfg.json` + `FOLDER/sae_weights.safetensors`.
    Saelens,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::GemmaScope2 => "gemma_scope_2",
            Format::GemmaScopeNpz => "gemma_scope_npz",
            Format::LlamaScope => "llama_scope",
            Format::Saelens => "saelens",
        }
    }

    /// The files of one SAE, relative to its folder.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Format::GemmaScope2 => &["params.safetensors"],
            Format::GemmaScopeNpz => &["params.npz"],
            Format::LlamaScope => &["hyperparams.json", "checkpoints/final.safetensors"],
            Format::Saelens => &["cfg.json", "sae_weights.safetensors"],
        }
    }
}

/// One family of SAE ids in a release.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdPattern {
    /// The id, with `{name}` placeholders.
    pub id: String,
    /// The folder in the repo (placeholders and `{id}`); default: the id.
    #[serde(default)]
    pub path: Option<String>,
    /// TransformerLens hook name (placeholders and `{id}`).
    pub hook: String,
    /// Allowed values of each placeholder: a list, `"a..b"` (inclusive) or `"int"`.
    #[serde(default)]
    pub values: BTreeMap<String, toml::Value>,
    /// Explicit id → folder table; when given, only these ids exist.
    #[serde(default)]
    pub paths: BTreeMap<String, String>,
}

/// A release: one Hub repo, one model, one format.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub name: String,
    /// Hub repo id.
    pub repo: String,
    #[serde(default)]
    pub revision: Option<String>,
    /// The model SAELens names (Hub id or TransformerLens name).
    pub model: String,
    /// engram's short name for that model, where it has one.
    #[serde(default)]
    pub engram_model: Option<String>,
    pub architecture: String,
    pub format: Format,
    /// How many ids SAELens lists for the release.
    pub saelens_ids: usize,
    #[serde(default)]
    pub note: Option<String>,
    pub saes: Vec<IdPattern>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    release: Vec<Release>,
}

/// The releases engram knows.
#[derive(Clone, Debug)]
pub struct Registry {
    pub releases: Vec<Release>,
}

/// One SAE of a release, resolved to its repo folder and hook.
#[derive(Clone, Debug, Serialize)]
pub struct PretrainedRef {
    pub release: String,
    pub sae_id: String,
    pub repo: String,
    pub revision: String,
    pub format: Format,
    pub model: String,
    /// Folder in the repo.
    pub folder: String,
    pub hook: String,
}

impl PretrainedRef {
    /// `RELEASE/SAE_ID`.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.release, self.sae_id)
    }

    /// Repo-relative paths of the SAE's files.
    pub fn files(&self) -> Vec<String> {
        self.format
            .files()
            .iter()
            .map(|f| format!("{}/{f}", self.folder))
            .collect()
    }

    /// The command that fetches the SAE into the hf-hub cache.
    pub fn download_command(&self) -> String {
        let rev = match self.revision.as_str() {
            "main" => String::new(),
            r => format!(" --revision {r}"),
        };
        format!(
            "huggingface-cli download {}{rev} --include '{}/*'",
            self.repo, self.folder
        )
    }
}

impl Registry {
    /// The registry compiled into engram.
    pub fn builtin() -> &'static Registry {
        static R: OnceLock<Registry> = OnceLock::new();
        R.get_or_init(|| Registry::parse(REGISTRY_TOML).expect("pretrained_saes.toml is valid"))
    }

    /// Parse and check a registry in the format of `pretrained_saes.toml`.
    pub fn parse(text: &str) -> Result<Registry> {
        let f: RegistryFile =
            toml::from_str(text).map_err(|e| Error::msg(format!("SAE registry: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        for r in &f.release {
            if r.name.is_empty() || r.name.contains('/') || !seen.insert(r.name.as_str()) {
                crate::bail!("SAE registry: bad or repeated release name `{}`", r.name);
            }
            if r.format != Format::Saelens && r.architecture != "jumprelu" {
                crate::bail!(
                    "SAE registry: release `{}` has format {} but architecture `{}` (jumprelu only)",
                    r.name,
                    r.format.name(),
                    r.architecture
                );
            }
            for p in &r.saes {
                let names = placeholders(&p.id);
                for n in &names {
                    let v = p.values.get(n).ok_or_else(|| {
                        Error::msg(format!(
                            "SAE registry: `{}` in release `{}` has no values for {{{n}}}",
                            p.id, r.name
                        ))
                    })?;
                    Domain::of(v).map_err(|e| {
                        Error::msg(format!("SAE registry: release `{}`: {n}: {e}", r.name))
                    })?;
                }
                for t in [p.path.as_deref().unwrap_or("{id}"), p.hook.as_str()] {
                    if let Some(bad) = placeholders(t)
                        .into_iter()
                        .find(|n| n != "id" && !names.contains(n))
                    {
                        crate::bail!(
                            "SAE registry: release `{}`: `{t}` uses {{{bad}}}, which `{}` lacks",
                            r.name,
                            p.id
                        );
                    }
                }
            }
        }
        Ok(Registry {
            releases: f.release,
        })
    }

    pub fn release(&self, name: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.name == name)
    }

    /// Release names closest to `name` (edit distance), at most `n`.
    pub fn closest(&self, name: &str, n: usize) -> Vec<&str> {
        let mut v: Vec<(usize, &str)> = self
            .releases
            .iter()
            .map(|r| (edit_distance(name, &r.name), r.name.as_str()))
            .collect();
        v.sort();
        v.into_iter().take(n).map(|(_, s)| s).collect()
    }

    /// Resolve `RELEASE/SAE_ID`: `Ok(None)` when the release part is not in the registry.
    pub fn lookup(&self, spec: &str) -> Result<Option<PretrainedRef>> {
        let Some((rel, id)) = spec.split_once('/') else {
            return Ok(None);
        };
        let Some(r) = self.release(rel) else {
            return Ok(None);
        };
        r.resolve(id).map(Some)
    }

    /// Resolve `RELEASE/SAE_ID`, with a one-line error naming what is wrong.
    pub fn resolve(&self, spec: &str) -> Result<PretrainedRef> {
        if let Some(r) = self.lookup(spec)? {
            return Ok(r);
        }
        let rel = spec.split_once('/').map_or(spec, |(r, _)| r);
        crate::bail!(
            "pretrained SAE `{spec}`: release `{rel}` is not in engram's registry (closest: {}; \
             `engram sae pretrained` lists them)",
            self.closest(rel, 3).join(", ")
        )
    }
}

impl Release {
    /// The ids as a human-readable rule (`engram sae pretrained`).
    pub fn id_rules(&self) -> Vec<String> {
        self.saes
            .iter()
            .map(|p| {
                let mut s = p.id.clone();
                if !p.paths.is_empty() {
                    s += &format!(" ({} listed)", p.paths.len());
                }
                for (k, v) in &p.values {
                    s += &format!(
                        " {k}∈{}",
                        Domain::of(v).map(|d| d.show()).unwrap_or_default()
                    );
                }
                s
            })
            .collect()
    }

    /// Hook patterns of the release.
    pub fn hooks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .saes
            .iter()
            .map(|p| p.hook.replace("{id}", &p.id))
            .collect();
        v.dedup();
        v
    }

    /// One SAE of this release.
    pub fn resolve(&self, sae_id: &str) -> Result<PretrainedRef> {
        for p in &self.saes {
            let Some(vars) = match_pattern(&p.id, sae_id, &p.values) else {
                continue;
            };
            let fill = |t: &str| {
                let mut s = t.replace("{id}", sae_id);
                for (k, v) in &vars {
                    s = s.replace(&format!("{{{k}}}"), v);
                }
                s
            };
            let folder = if p.paths.is_empty() {
                fill(p.path.as_deref().unwrap_or("{id}"))
            } else {
                match p.paths.get(sae_id) {
                    Some(f) => f.clone(),
                    None => continue,
                }
            };
            return Ok(PretrainedRef {
                release: self.name.clone(),
                sae_id: sae_id.to_string(),
                repo: self.repo.clone(),
                revision: self.revision.clone().unwrap_or_else(|| "main".into()),
                format: self.format,
                model: self.model.clone(),
                folder,
                hook: fill(&p.hook),
            });
        }
        crate::bail!(
            "pretrained SAE `{}/{sae_id}`: no SAE id `{sae_id}` in release `{}` (ids: {})",
            self.name,
            self.name,
            self.id_rules().join("; ")
        )
    }
}

/// The allowed values of one placeholder.
enum Domain {
    List(Vec<String>),
    Range(u64, u64),
    Int,
}

impl Domain {
    fn of(v: &toml::Value) -> Result<Domain> {
        match v {
            toml::Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    _ => crate::bail!("list values must be strings or integers"),
                })
                .collect::<Result<Vec<_>>>()
                .map(Domain::List),
            toml::Value::String(s) if s == "int" => Ok(Domain::Int),
            toml::Value::String(s) => {
                let r = s.split_once("..").and_then(|(a, b)| {
                    Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
                });
                match r {
                    Some((a, b)) if a <= b => Ok(Domain::Range(a, b)),
                    _ => crate::bail!("`{s}` is not a list, \"a..b\" or \"int\""),
                }
            }
            _ => crate::bail!("values must be a list, \"a..b\" or \"int\""),
        }
    }

    fn show(&self) -> String {
        match self {
            Domain::List(v) => format!("{{{}}}", v.join(",")),
            Domain::Range(a, b) => format!("{a}..{b}"),
            Domain::Int => "ℕ".into(),
        }
    }

    /// Candidate prefixes of `s` this domain accepts.
    fn prefixes<'a>(&self, s: &'a str) -> Vec<&'a str> {
        match self {
            Domain::List(v) => v
                .iter()
                .filter(|x| s.starts_with(x.as_str()))
                .map(|x| &s[..x.len()])
                .collect(),
            Domain::Range(..) | Domain::Int => {
                let n = s.bytes().take_while(u8::is_ascii_digit).count();
                (1..=n)
                    .map(|k| &s[..k])
                    // No leading zeros: `05` is not layer 5.
                    .filter(|d| d.len() == 1 || !d.starts_with('0'))
                    .filter(|d| match self {
                        Domain::Range(a, b) => d.parse::<u64>().is_ok_and(|x| *a <= x && x <= *b),
                        _ => true,
                    })
                    .collect()
            }
        }
    }
}

/// The `{name}` placeholders of a pattern, in order.
fn placeholders(t: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let Some(j) = rest[i..].find('}') else { break };
        out.push(rest[i + 1..i + j].to_string());
        rest = &rest[i + j + 1..];
    }
    out
}

/// Match `s` against a pattern; the placeholder values on success.
fn match_pattern(
    pat: &str,
    s: &str,
    values: &BTreeMap<String, toml::Value>,
) -> Option<Vec<(String, String)>> {
    fn go(
        pat: &str,
        s: &str,
        values: &BTreeMap<String, toml::Value>,
        acc: &mut Vec<(String, String)>,
    ) -> bool {
        let Some(i) = pat.find('{') else {
            return pat == s;
        };
        let Some(rest) = s.strip_prefix(&pat[..i]) else {
            return false;
        };
        let Some(j) = pat[i..].find('}') else {
            return false;
        };
        let name = &pat[i + 1..i + j];
        let tail = &pat[i + j + 1..];
        let Some(dom) = values.get(name).and_then(|v| Domain::of(v).ok()) else {
            return false;
        };
        for v in dom.prefixes(rest) {
            acc.push((name.to_string(), v.to_string()));
            if go(tail, &rest[v.len()..], values, acc) {
                return true;
            }
            acc.pop();
        }
        false
    }
    let mut acc = vec![];
    go(pat, s, values, &mut acc).then_some(acc)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Where the files of one pretrained SAE were found.
#[derive(Clone, Debug)]
pub struct Located {
    /// `snapshots/<commit>/<folder>`.
    pub dir: PathBuf,
    pub commit: String,
}

/// Find the SAE's files in the hf-hub cache `cache`; when they are missing and `offline` is
/// false, fetch them through hf-hub first.
pub fn locate(r: &PretrainedRef, cache: &Path, offline: bool) -> Result<Located> {
    let found = || -> Option<Located> {
        let (snap, commit) = source::cached_repo_snapshot(cache, &r.repo, &r.revision)?;
        let dir = snap.join(&r.folder);
        r.format
            .files()
            .iter()
            .all(|f| dir.join(f).is_file())
            .then_some(Located { dir, commit })
    };
    if let Some(l) = found() {
        return Ok(l);
    }
    let missing = |why: String| {
        Error::msg(format!(
            "pretrained SAE `{}`: {} of {}@{} is not in the Hugging Face cache {} ({why}); fetch it \
             with `{}`",
            r.spec(),
            r.files().join(" + "),
            r.repo,
            r.revision,
            cache.display(),
            r.download_command()
        ))
    };
    if offline {
        return Err(missing("HF_HUB_OFFLINE is set".into()));
    }
    download(r, cache).map_err(|e| missing(format!("the Hub could not be reached: {e}")))?;
    found().ok_or_else(|| missing("the download left the snapshot incomplete".into()))
}

/// Fetch the SAE's files into the cache through hf-hub (as `model::source` fetches models).
fn download(r: &PretrainedRef, cache: &Path) -> Result<()> {
    let repo = crate::model::source::hub_repo(&r.repo, &r.revision, cache)?;
    for f in r.files() {
        repo.get(&f).map_err(|e| Error::msg(e.to_string()))?;
    }
    Ok(())
}

/// A loaded SAE and where it came from.
#[derive(Clone, Debug)]
pub struct LoadedSae {
    /// Its name in tables: the folder name, or `RELEASE/SAE_ID`.
    pub label: String,
    pub sae: Sae,
    /// The resolved pretrained SAE, if it was one.
    pub pretrained: Option<(PretrainedRef, Located)>,
}

impl LoadedSae {
    /// One line for a manifest: what was loaded from where.
    pub fn provenance(&self) -> Option<String> {
        self.pretrained.as_ref().map(|(r, l)| {
            format!(
                "{}: {} {}@{} ({}, hook {}) from {}",
                r.spec(),
                r.format.name(),
                r.repo,
                l.commit,
                r.folder,
                r.hook,
                l.dir.display()
            )
        })
    }
}

/// Load one pretrained SAE `RELEASE/SAE_ID` of `registry` from the hf-hub cache `cache`.
pub fn load_pretrained(
    registry: &Registry,
    spec: &str,
    cache: &Path,
    offline: bool,
    device: &Device,
) -> Result<LoadedSae> {
    let r = registry.resolve(spec)?;
    let loc = locate(&r, cache, offline)?;
    let sae = formats::load(&r, &loc, device)?;
    Ok(LoadedSae {
        label: r.spec(),
        sae,
        pretrained: Some((r, loc)),
    })
}

/// What `--sae X` names: `None` for an existing directory (engram / SAELens layout), which wins;
/// otherwise `RELEASE/SAE_ID` of the built-in registry, or a one-line error.
pub fn resolve_sae_arg(arg: &Path) -> Result<Option<PretrainedRef>> {
    if arg.exists() {
        return Ok(None);
    }
    let spec = arg.to_string_lossy();
    let reg = Registry::builtin();
    if let Some(r) = reg.lookup(&spec)? {
        return Ok(Some(r));
    }
    let rel = spec.split_once('/').map_or(&*spec, |(r, _)| r);
    if rel.is_empty() || rel.starts_with('.') || rel.starts_with('~') {
        crate::bail!("--sae {spec}: no such directory");
    }
    crate::bail!(
        "--sae {spec}: no such directory, and `{rel}` is not a pretrained SAE release (closest: \
         {}; `engram sae pretrained` lists them)",
        reg.closest(rel, 3).join(", ")
    )
}

/// Load what `--sae X` names ([`resolve_sae_arg`]); pretrained SAEs come from the hf-hub cache
/// (`source::hf_cache_dir`, fetched unless `HF_HUB_OFFLINE`).
pub fn load_sae_arg(arg: &Path, device: &Device) -> Result<LoadedSae> {
    match resolve_sae_arg(arg)? {
        None => {
            let sae = Sae::load(arg, device)?;
            let label = arg
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| sae.kind.name().to_string());
            Ok(LoadedSae {
                label,
                sae,
                pretrained: None,
            })
        }
        Some(r) => {
            let loc = locate(&r, &source::hf_cache_dir(), source::hf_offline())?;
            let sae = formats::load(&r, &loc, device)?;
            Ok(LoadedSae {
                label: r.spec(),
                sae,
                pretrained: Some((r, loc)),
            })
        }
    }
}

/// Check that a loaded SAE fits the activations it is applied to: the hook it was trained on
/// (pretrained SAEs, whose hook the registry names) and the width.
pub fn check_fits(s: &LoadedSae, hook: &str, d: usize) -> Result<()> {
    if let Some((r, _)) = &s.pretrained {
        if r.hook != hook {
            crate::bail!(
                "pretrained SAE `{}` reads {} but the activations are from {hook}",
                r.spec(),
                r.hook
            );
        }
    }
    if s.sae.d_in() != d {
        crate::bail!(
            "SAE `{}` has d_in {} but the store has d {d} (activations at {hook})",
            s.label,
            s.sae.d_in()
        );
    }
    Ok(())
}

/// `engram sae pretrained`: one line per release.
pub fn format_listing(reg: &Registry) -> String {
    let mut s = format!(
        "{:<34} {:<24} {:<10} {:<16} {:>4}  {}\n",
        "release", "model", "engram", "format", "ids", "hook"
    );
    for r in &reg.releases {
        s += &format!(
            "{:<34} {:<24} {:<10} {:<16} {:>4}  {}\n",
            r.name,
            r.model,
            r.engram_model.as_deref().unwrap_or("-"),
            r.format.name(),
            r.saelens_ids,
            r.hooks().join(", ")
        );
    }
    s
}

/// `engram sae pretrained RELEASE`: the release's repo, id rules and note.
pub fn format_release(r: &Release) -> String {
    let mut s = format!(
        "{}: {} ({}), {} {}, {} ids in SAELens\n",
        r.name,
        r.repo,
        r.model,
        r.architecture,
        r.format.name(),
        r.saelens_ids
    );
    for (rule, p) in r.id_rules().iter().zip(&r.saes) {
        s += &format!(
            "  id {rule}\n     folder {}  hook {}\n",
            if p.paths.is_empty() {
                p.path.as_deref().unwrap_or("{id}")
            } else {
                "(table)"
            },
            p.hook
        );
    }
    if let Some(n) = &r.note {
        s += &format!("  note: {n}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_parses_and_resolves() {
        let reg = Registry::builtin();
        let r = reg
            .resolve("gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium")
            .unwrap();
        assert_eq!(r.folder, "resid_post/layer_9_width_16k_l0_medium");
        assert_eq!(r.hook, "blocks.9.hook_resid_post");
        let r = reg
            .resolve("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
            .unwrap();
        assert_eq!(r.folder, "layer_12/width_16k/average_l0_82");
        let r = reg
            .resolve("gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_71")
            .unwrap();
        assert_eq!(r.folder, "layer_12/width_16k/average_l0_71");
        assert_eq!(r.hook, "blocks.12.hook_resid_post");
        let r = reg.resolve("llama_scope_lxr_8x/l15r_8x").unwrap();
        assert_eq!(r.folder, "Llama3_1-8B-Base-L15R-8x");
        let r = reg
            .resolve("gpt2-small-res-jb/blocks.11.hook_resid_post")
            .unwrap();
        assert_eq!(r.hook, "blocks.11.hook_resid_post");
        for bad in [
            "gemma-scope-2-270m-pt-res/layer_10_width_16k_l0_medium",
            "gemma-scope-2-270m-pt-res/layer_09_width_16k_l0_medium",
            "gemma-scope-2b-pt-res/layer_26/width_16k/average_l0_71",
            "gemma-scope-2b-pt-res-canonical/layer_12/width_131k/canonical",
            "llama_scope_lxr_8x/l32r_8x",
        ] {
            assert!(reg.resolve(bad).is_err(), "{bad}");
        }
        assert_eq!(reg.releases.len(), 7);
    }

    #[test]
    fn bad_registries_are_refused() {
        let text = |format: &str, saes: &str| {
            format!(
                "[[release]]\nname = \"r\"\nrepo = \"o/r\"\nmodel = \"m\"\n\
                 architecture = \"jumprelu\"\nformat = \"{format}\"\nsaelens_ids = 1\n\
                 [[release.saes]]\n{saes}\n"
            )
        };
        let err = |t: String| Registry::parse(&t).unwrap_err().to_string();
        let ok = "id = \"l{layer}\"\nhook = \"blocks.{layer}.hook_resid_post\"\n\
                  values = { layer = \"0..3\" }";
        assert!(Registry::parse(&text("gemma_scope_npz", ok)).is_ok());
        assert!(err(text("pt", ok)).contains("unknown variant `pt`"));
        let e = err(text(
            "gemma_scope_npz",
            "id = \"l{layer}\"\nhook = \"blocks.{layer}.hook_resid_post\"",
        ));
        assert!(e.contains("no values for {layer}"), "{e}");
        let e = err(text(
            "gemma_scope_npz",
            "id = \"l{layer}\"\nhook = \"blocks.{w}.x\"\nvalues = { layer = [1] }",
        ));
        assert!(e.contains("uses {w}"), "{e}");
        let e = err(text(
            "gemma_scope_npz",
            "id = \"l{layer}\"\nhook = \"h\"\nvalues = { layer = \"9..3\" }",
        ));
        assert!(e.contains("not a list"), "{e}");
    }
}
