//! Pretrained SAEs by release name (`RELEASE/SAE_ID`): engram's real registry entries, resolved
//! through fake hf-hub cache folders (blobs + snapshots + refs, `hub::lay_out_repo`) that hold
//! tiny SAEs in each source's own layout (tests/fixtures/sae_pretrained, written by
//! scripts/reference/make_pretrained_sae_fixtures.py; the SAELens layout is
//! tests/fixtures/saelens_jumprelu, written by SAELens). The cache is passed explicitly to the
//! library and through HF_HUB_CACHE to the binary, so no test touches this process's environment.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use engram::probes::sae::pretrained::{self, load_pretrained, Registry};
use engram::probes::sae::store::{ActivationStore, StoreMeta};

use crate::common::*;
use crate::hub::lay_out_repo;

const COMMIT: &str = "00000000000000000000000000000000000000aa";
const G2: &str = "gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium";
const NPZ_CANON: &str = "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical";
const NPZ: &str = "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82";
const LLAMA: &str = "llama_scope_lxr_8x/l15r_8x";
const SAELENS: &str = "gpt2-small-res-jb/blocks.1.hook_resid_pre";

fn fx(rel: &str) -> PathBuf {
    fixture_dir("sae_pretrained").join(rel)
}

/// A cache holding one tiny SAE per layout, under the real releases' repos and folders.
fn fake_cache(root: &Path) {
    lay_out_repo(
        root,
        "google/gemma-scope-2-270m-pt",
        COMMIT,
        &[
            (
                "resid_post/layer_9_width_16k_l0_medium/params.safetensors",
                fx("gemma_scope_2/params.safetensors"),
            ),
            (
                "resid_post/layer_9_width_16k_l0_medium/config.json",
                fx("gemma_scope_2/config.json"),
            ),
        ],
    );
    lay_out_repo(
        root,
        "google/gemma-scope-2b-pt-res",
        COMMIT,
        &[(
            "layer_12/width_16k/average_l0_82/params.npz",
            fx("gemma_scope_npz/params.npz"),
        )],
    );
    lay_out_repo(
        root,
        "fnlp/Llama3_1-8B-Base-LXR-8x",
        COMMIT,
        &[
            (
                "Llama3_1-8B-Base-L15R-8x/hyperparams.json",
                fx("llama_scope/hyperparams.json"),
            ),
            (
                "Llama3_1-8B-Base-L15R-8x/checkpoints/final.safetensors",
                fx("llama_scope/checkpoints/final.safetensors"),
            ),
        ],
    );
    // The SAELens-written fixture, its hook renamed to the id it is filed under.
    let sl = fixture_dir("saelens_jumprelu");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sl.join("cfg.json")).unwrap()).unwrap();
    cfg["metadata"]["hook_name"] = "blocks.1.hook_resid_pre".into();
    let cfg_path = root.join("cfg.json.src");
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    lay_out_repo(
        root,
        "jbloom/GPT2-Small-SAEs-Reformatted",
        COMMIT,
        &[
            ("blocks.1.hook_resid_pre/cfg.json", cfg_path),
            (
                "blocks.1.hook_resid_pre/sae_weights.safetensors",
                sl.join("sae_weights.safetensors"),
            ),
            // Unchanged: its cfg.json says blocks.1.hook_resid_post.
            ("blocks.2.hook_resid_pre/cfg.json", sl.join("cfg.json")),
            (
                "blocks.2.hook_resid_pre/sae_weights.safetensors",
                sl.join("sae_weights.safetensors"),
            ),
        ],
    );
}

fn load(cache: &Path, spec: &str) -> engram::Result<pretrained::LoadedSae> {
    load_pretrained(Registry::builtin(), spec, cache, true, &Device::Cpu)
}

fn one_line(e: &str) {
    assert!(!e.contains('\n'), "not one line: {e}");
}

#[test]
fn each_layout_loads_through_the_registry_and_matches_numpy() {
    let tmp = tempfile::tempdir().unwrap();
    fake_cache(tmp.path());
    let exp = candle_core::safetensors::load(fx("expected.safetensors"), &Device::Cpu).unwrap();
    let sl = candle_core::safetensors::load(
        fixture_dir("saelens_jumprelu").join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let cases: [(&str, &str, &Tensor, &Tensor, &Tensor); 5] = [
        (
            G2,
            "blocks.9.hook_resid_post",
            &exp["x"],
            &exp["gemma_scope_2.feature_acts"],
            &exp["gemma_scope_2.sae_out"],
        ),
        (
            NPZ,
            "blocks.12.hook_resid_post",
            &exp["x"],
            &exp["gemma_scope_npz.feature_acts"],
            &exp["gemma_scope_npz.sae_out"],
        ),
        (
            NPZ_CANON,
            "blocks.12.hook_resid_post",
            &exp["x"],
            &exp["gemma_scope_npz.feature_acts"],
            &exp["gemma_scope_npz.sae_out"],
        ),
        (
            LLAMA,
            "blocks.15.hook_resid_post",
            &exp["x"],
            &exp["llama_scope.feature_acts"],
            &exp["llama_scope.sae_out"],
        ),
        (
            SAELENS,
            "blocks.1.hook_resid_pre",
            &sl["x"],
            &sl["feature_acts"],
            &sl["sae_out"],
        ),
    ];
    for (spec, hook, x, acts, out) in cases {
        let l = load(tmp.path(), spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(l.label, spec);
        assert_eq!(l.sae.hook_name().as_deref(), Some(hook), "{spec}");
        assert_eq!(l.sae.d_in(), 16, "{spec}");
        let (r, loc) = l.pretrained.as_ref().unwrap();
        assert_eq!(loc.commit, COMMIT);
        assert_eq!(r.hook, hook);
        let z = l.sae.encode(x).unwrap();
        let y = l.sae.decode(&z).unwrap();
        let (ez, ey) = (max_abs_diff(&z, acts), max_abs_diff(&y, out));
        eprintln!("{spec}: max |Δ| encode {ez:e}, decode {ey:e}");
        assert!(
            ez < 1e-5 && ey < 1e-5,
            "{spec}: encode {ez:e}, decode {ey:e}"
        );
        // Some latents fire and some do not: the thresholds matter.
        let l0: f32 = crate::common::count_positive(&z);
        assert!(
            l0 > 0.0 && l0 < (z.elem_count() as f32),
            "{spec}: L0 total {l0}"
        );
        assert!(l.provenance().unwrap().contains(COMMIT));
    }
}

#[test]
fn files_missing_from_the_cache_name_release_id_repo_and_the_download_command() {
    let tmp = tempfile::tempdir().unwrap();
    let e = load(tmp.path(), G2).unwrap_err().to_string();
    one_line(&e);
    for needle in [
        G2,
        "google/gemma-scope-2-270m-pt",
        "HF_HUB_OFFLINE",
        tmp.path().to_str().unwrap(),
        "`huggingface-cli download google/gemma-scope-2-270m-pt --include \
         'resid_post/layer_9_width_16k_l0_medium/*'`",
    ] {
        assert!(e.contains(needle), "{e} lacks {needle}");
    }
    // A snapshot that lacks one of the files (Llama Scope needs two) is not used either.
    lay_out_repo(
        tmp.path(),
        "fnlp/Llama3_1-8B-Base-LXR-8x",
        COMMIT,
        &[(
            "Llama3_1-8B-Base-L15R-8x/hyperparams.json",
            fx("llama_scope/hyperparams.json"),
        )],
    );
    let e = load(tmp.path(), LLAMA).unwrap_err().to_string();
    one_line(&e);
    assert!(
        e.contains("checkpoints/final.safetensors")
            && e.contains("--include 'Llama3_1-8B-Base-L15R-8x/*'"),
        "{e}"
    );
}

#[test]
fn unknown_releases_and_ids_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let e = load(
        tmp.path(),
        "gemma-scope-2-270m-pt-resid/layer_9_width_16k_l0_medium",
    )
    .unwrap_err()
    .to_string();
    one_line(&e);
    assert!(
        e.contains("`gemma-scope-2-270m-pt-resid` is not in engram's registry")
            && e.contains("closest: gemma-scope-2-270m-pt-res"),
        "{e}"
    );
    for (spec, needle) in [
        (
            "gemma-scope-2-270m-pt-res/layer_10_width_16k_l0_medium",
            "no SAE id `layer_10_width_16k_l0_medium`",
        ),
        (
            "gemma-scope-2b-pt-res-canonical/layer_12/width_131k/canonical",
            "in release `gemma-scope-2b-pt-res-canonical`",
        ),
        ("llama_scope_lxr_8x/l32r_8x", "l{layer}r_8x layer∈0..31"),
    ] {
        let e = load(tmp.path(), spec).unwrap_err().to_string();
        one_line(&e);
        assert!(e.contains(needle), "{spec}: {e}");
    }
}

#[test]
fn corrupt_truncated_or_incomplete_files_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let npz = std::fs::read(fx("gemma_scope_npz/params.npz")).unwrap();
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let truncated = bad.join("truncated.npz");
    std::fs::write(&truncated, &npz[..npz.len() / 2]).unwrap();
    let garbage = bad.join("garbage.npz");
    std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
    // An archive without the threshold array (written by candle's own npz writer).
    let arrays = candle_core::Tensor::read_npz(fx("gemma_scope_npz/params.npz")).unwrap();
    let kept: Vec<(String, Tensor)> = arrays
        .into_iter()
        .filter(|(k, _)| k != "threshold")
        .collect();
    let no_threshold = bad.join("no_threshold.npz");
    Tensor::write_npz(&kept, &no_threshold).unwrap();
    let cases = [
        (
            "average_l0_1",
            truncated,
            "not a readable NumPy .npz archive",
        ),
        ("average_l0_2", garbage, "not a readable NumPy .npz archive"),
        (
            "average_l0_3",
            no_threshold,
            "no `threshold` array (has: W_dec, W_enc, b_dec, b_enc)",
        ),
    ];
    for (folder, file, needle) in &cases {
        lay_out_repo(
            tmp.path(),
            "google/gemma-scope-2b-pt-res",
            COMMIT,
            &[(
                &format!("layer_3/width_16k/{folder}/params.npz") as &str,
                file,
            )],
        );
        let spec = format!("gemma-scope-2b-pt-res/layer_3/width_16k/{folder}");
        let e = load(tmp.path(), &spec).unwrap_err().to_string();
        one_line(&e);
        assert!(
            e.contains(needle) && e.contains("params.npz"),
            "{spec}: {e}"
        );
    }
    // A file that disagrees with the registry about the hook.
    fake_cache(tmp.path());
    let e = load(tmp.path(), "gpt2-small-res-jb/blocks.2.hook_resid_pre")
        .unwrap_err()
        .to_string();
    one_line(&e);
    assert!(
        e.contains(
            "says hook blocks.1.hook_resid_post but the registry says blocks.2.hook_resid_pre"
        ),
        "{e}"
    );
}

/// A store of 4096 random activations of width `d` at `hook`.
fn store(dir: &Path, hook: &str, d: usize) {
    let mut meta = StoreMeta::new("synthetic", hook, d);
    meta.shard_size = 1024;
    meta.shards_per_round = 4;
    let mut s = ActivationStore::create_or_resume(dir, meta).unwrap();
    let n = 4096;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let acts = engram::probes::sae::randn(&mut rng, n * d);
    s.write_round(acts, vec![0; n], 1).unwrap();
    s.finish().unwrap();
}

fn engram_with_cache(cache: &Path, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sae_eval_takes_release_ids_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    fake_cache(&cache);
    let s9 = tmp.path().join("store9");
    store(&s9, "blocks.9.hook_resid_post", 16);
    let s9 = s9.to_str().unwrap();
    let out = tmp.path().join("eval");
    let o = out.to_str().unwrap();
    let (code, stdout, err) = engram_with_cache(
        &cache,
        tmp.path(),
        &[
            "--quiet", "sae", "eval", "--store", s9, "--sae", G2, "--out", o,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains(G2), "{stdout}");
    assert!(out.join("metrics.parquet").is_file());
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("google/gemma-scope-2-270m-pt@") && manifest.contains(COMMIT),
        "{manifest}"
    );

    // Bad input: one line on stderr, non-zero exit, nothing written.
    let s24 = tmp.path().join("store24");
    store(&s24, "blocks.9.hook_resid_post", 24);
    let s24 = s24.to_str().unwrap();
    let nothing = tmp.path().join("nothing");
    let n = nothing.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--store", s9, "--sae", "gemma-scope-2-270m-pt-res/layer_5_width_16k_l0_medium", "--out", n],
            "gemma-scope-2-270m-pt-res/layer_5_width_16k_l0_medium`: resid_post/layer_5_width_16k_l0_medium/params.safetensors",
        ),
        (vec!["--store", s24, "--sae", G2, "--out", n], "has d_in 16 but the store has d 24"),
        (vec!["--store", s9, "--sae", "gemma-scope-3-270m-pt-res/layer_9", "--out", n], "closest: gemma-scope-2-270m-pt-res"),
        (vec!["--store", s9, "--sae", "gemma-scope-2-270m-pt-res/layer_9", "--out", n], "no SAE id `layer_9`"),
        (vec!["--store", s9, "--sae", G2], "give --out DIR"),
        (vec!["--store", s9, "--sae", "./no/such/dir", "--out", n], "--sae ./no/such/dir: no such directory"),
    ] {
        let args: Vec<&str> = ["sae", "eval"].into_iter().chain(args).collect();
        let (code, _, err) = engram_with_cache(&cache, tmp.path(), &args);
        assert_ne!(code, 0, "{args:?}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("error: ") && err.contains(needle), "{args:?}: {err}");
        assert!(!nothing.exists(), "{args:?} wrote {n}");
        assert!(!tmp.path().join(".nothing.partial").exists(), "{args:?}: partial left");
    }
    // A hook the store was not collected from.
    lay_out_repo(
        &cache,
        "google/gemma-scope-2-270m-pt",
        COMMIT,
        &[(
            "resid_post/layer_5_width_16k_l0_medium/params.safetensors",
            fx("gemma_scope_2/params.safetensors"),
        )],
    );
    let (code, _, err) = engram_with_cache(
        &cache,
        tmp.path(),
        &[
            "sae",
            "eval",
            "--store",
            s9,
            "--sae",
            "gemma-scope-2-270m-pt-res/layer_5_width_16k_l0_medium",
            "--out",
            n,
        ],
    );
    assert!(code != 0 && err.contains("reads blocks.5.hook_resid_post but the activations are from blocks.9.hook_resid_post"), "{err}");
    assert!(!nothing.exists());

    // An existing directory wins over a release of the same name (no cache needed).
    let local = tmp.path().join(G2);
    std::fs::create_dir_all(&local).unwrap();
    for f in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(fixture_dir("saelens_jumprelu").join(f), local.join(f)).unwrap();
    }
    let s1 = tmp.path().join("store1");
    store(&s1, "blocks.1.hook_resid_post", 16);
    let empty = tmp.path().join("empty-cache");
    let (code, stdout, err) = engram_with_cache(
        &empty,
        tmp.path(),
        &[
            "--quiet",
            "sae",
            "eval",
            "--store",
            s1.to_str().unwrap(),
            "--sae",
            G2,
            "--out",
            "local-eval",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("layer_9_width_16k_l0_medium") && !stdout.contains(G2),
        "{stdout}"
    );

    // The listing.
    let (code, stdout, _) = engram_with_cache(&cache, tmp.path(), &["sae", "pretrained"]);
    assert_eq!(code, 0);
    for r in [
        "gemma-scope-2-270m-pt-res",
        "gemma-scope-2b-pt-res-canonical",
        "llama_scope_lxr_8x",
        "gpt2-small-res-jb",
    ] {
        assert!(stdout.contains(r), "{stdout}");
    }
    let (code, stdout, _) = engram_with_cache(
        &cache,
        tmp.path(),
        &["sae", "pretrained", "gemma-scope-2-270m-pt-res"],
    );
    assert!(
        code == 0
            && stdout.contains("resid_post/{id}")
            && stdout.contains("blocks.{layer}.hook_resid_post"),
        "{stdout}"
    );
}
