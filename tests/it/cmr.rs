//! CMR fit and simulation checks against the paper's saved artifacts
//! (`notebooks-data/icl-cmr/`, from github.com/corxyz/icl-cmr).

use std::path::PathBuf;
use std::time::Instant;

use engram::probes::cmr::{
    fit_head, fit_heads, read_npy_f64, simulate_point, CmrGrid, CrpTable, SimConfig, N_LAGS,
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("notebooks-data/icl-cmr")
        .join(name)
}

fn saved_table() -> CrpTable {
    CrpTable::load_npy(data("cmr_crp_avg_20_11.npy")).expect("saved CMR table")
}

fn model_fits(table: &CrpTable, model: &str) -> engram::probes::cmr::HeadFits {
    let (shape, v) = read_npy_f64(data(&format!("{model}.CRP_scores.npy"))).unwrap();
    assert_eq!(shape.len(), 3, "{model}: {shape:?}");
    assert_eq!(shape[2], 16);
    fit_heads(table, &v, shape[0], shape[1]).unwrap()
}

/// Published shares (percent, 1 decimal) of heads with CMR distance < 0.5 and < 0.1.
#[test]
fn cmr_fit_reproduces_published_shares() {
    let table = saved_table();
    let published = [
        ("gpt2-small", 47.2, 30.6),
        ("pythia-70m-deduped-v0-final", 52.1, 25.0),
        ("qwen-7b", 42.7, 21.5),
        ("mistral-7b", 41.9, 22.6),
        ("llama3-8b", 53.8, 31.4),
    ];
    let mut failures = Vec::new();
    for (model, p05, p01) in published {
        let t = Instant::now();
        let fits = model_fits(&table, model);
        let s05 = 100.0 * fits.share_below(0.5);
        let s01 = 100.0 * fits.share_below(0.1);
        println!(
            "{model}: {} heads, {} degenerate, <0.5 {s05:.2}% (published {p05}), <0.1 {s01:.2}% (published {p01}) [{:.2?}]",
            fits.fits.len(),
            fits.n_degenerate(),
            t.elapsed()
        );
        assert_eq!(fits.n_degenerate(), 0, "{model}");
        if (s05 - p05).abs() > 0.051 || (s01 - p01).abs() > 0.051 {
            failures.push(format!("{model}: {s05:.2}/{s01:.2} vs {p05}/{p01}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn cmr_fit_gpt2_per_layer_and_heads() {
    let table = saved_table();
    let fits = model_fits(&table, "gpt2-small");
    let per_layer: Vec<f64> = fits
        .layer_share_below(0.5)
        .iter()
        .map(|s| (100.0 * s).round())
        .collect();
    println!("GPT-2 % heads < 0.5 by layer: {per_layer:?}");
    assert_eq!(
        per_layer,
        [25.0, 17.0, 8.0, 17.0, 33.0, 50.0, 42.0, 58.0, 75.0, 83.0, 83.0, 75.0]
    );

    for (head, dist, be, br, g) in [(1, 0.006, 0.60, 0.75, 0.3), (5, 0.007, 0.60, 0.95, 0.2)] {
        let f = fits.get(5, head);
        println!("GPT-2 L5H{head}: {f:?}");
        assert!(
            (f.distance - dist).abs() < 0.0005,
            "L5H{head} distance {}",
            f.distance
        );
        assert!(
            (f.beta_enc - be).abs() < 1e-9,
            "L5H{head} β_enc {}",
            f.beta_enc
        );
        assert!(
            (f.beta_rec - br).abs() < 1e-9,
            "L5H{head} β_rec {}",
            f.beta_rec
        );
        assert!(
            (f.gamma_ft - g).abs() < 1e-9,
            "L5H{head} γ_FT {}",
            f.gamma_ft
        );
        assert!(f.cmr_like && f.strict && f.inv_temp > 0.0);
    }

    // fit_head on the raw 16-lag vector agrees with fit_heads.
    let (_, v) = read_npy_f64(data("gpt2-small.CRP_scores.npy")).unwrap();
    let one = fit_head(&table, &v[(5 * 12 + 1) * 16..(5 * 12 + 2) * 16]);
    assert_eq!(&one, fits.get(5, 1));
}

/// Tolerance for comparing one simulated entry `ours` (standard error `sem`, estimated from
/// the per-trial spread) with the saved entry `saved`. Both are Monte-Carlo estimates with the
/// same number of trials, so their difference has standard error `√2·σ`; we allow `5·√2·σ`.
/// `σ = max(sem, sqrt(max(ours, saved) / (max_recalls·trials·starts)))`: the second term is the
/// Poisson lower bound for an entry built from rare hits (each hit weighs at least
/// `1 / (max_recalls·trials·starts)`), where the sample standard error of a run that happened
/// to see few hits underestimates the error. Closed-form entries must agree to 1e-12.
fn tolerance(sem: f64, ours: f64, saved: f64, closed_form: bool, cfg: &SimConfig) -> f64 {
    if closed_form {
        return 1e-12;
    }
    5.0 * std::f64::consts::SQRT_2 * sigma(sem, ours, saved, cfg) + 1e-12
}

/// The σ of [`tolerance`].
fn sigma(sem: f64, ours: f64, saved: f64, cfg: &SimConfig) -> f64 {
    let n = (cfg.max_recalls * cfg.trials * cfg.n_starts) as f64;
    sem.max((ours.max(saved) / n).sqrt())
}

#[test]
#[allow(clippy::needless_range_loop)]
fn cmr_simulation_matches_saved_table_at_sample_points() {
    let table = saved_table();
    let grid = CmrGrid::paper();
    let cfg = SimConfig::paper();
    // [i_enc, i_rec, i_gamma]: the two closed-form planes, the β_rec = 0 plane off γ = 0,
    // deterministic corners, and interior points (incl. GPT-2 L5H1's and L5H5's best fits).
    let points: [[usize; 3]; 12] = [
        [0, 20, 0],  // (0.05, 1.00, 0.0) closed form
        [11, 20, 0], // (0.60, 1.00, 0.0) closed form
        [0, 0, 0],   // (0.05, 0.00, 0.0) closed form
        [19, 0, 0],  // (1.00, 0.00, 0.0) closed form
        [9, 0, 5],   // (0.50, 0.00, 0.5): β_rec = 0, simulated
        [19, 20, 5], // (1.00, 1.00, 0.5)
        [19, 10, 5], // (1.00, 0.50, 0.5)
        [11, 15, 3], // (0.60, 0.75, 0.3)
        [11, 19, 2], // (0.60, 0.95, 0.2)
        [0, 19, 1],  // (0.05, 0.95, 0.1)
        [5, 10, 4],  // (0.30, 0.50, 0.4)
        [16, 4, 9],  // (0.85, 0.20, 0.9)
    ];
    let mut worst_z: f64 = 0.0;
    let mut failures = Vec::new();
    let t0 = Instant::now();
    for (n, idx) in points.iter().enumerate() {
        let flat = grid.ravel(*idx);
        let (be, br, g) = grid.params(flat);
        let t = Instant::now();
        let p = simulate_point(be, br, g, &cfg, 1234 + n as u64).unwrap();
        let saved = table.crp(*idx);
        let mut max_dev: f64 = 0.0;
        for l in 0..N_LAGS {
            let d = (p.crp[l] - saved[l]).abs();
            max_dev = max_dev.max(d);
            if !p.closed_form && p.sem[l] > 0.0 {
                let sg = sigma(p.sem[l], p.crp[l], saved[l], &cfg);
                worst_z = worst_z.max(d / (std::f64::consts::SQRT_2 * sg));
            }
            if d > tolerance(p.sem[l], p.crp[l], saved[l], p.closed_form, &cfg) {
                failures.push(format!(
                    "({be:.2},{br:.2},{g:.1}) lag {}: ours {:.6} saved {:.6} sem {:.2e}",
                    l as i64 - 8,
                    p.crp[l],
                    saved[l],
                    p.sem[l]
                ));
            }
        }
        println!(
            "({be:.2}, {br:.2}, {g:.1}) closed_form={} max |Δ| = {max_dev:.2e} [{:.2?}]",
            p.closed_form,
            t.elapsed()
        );
    }
    println!(
        "{} points in {:.2?}; worst |Δ|/(√2·σ) = {worst_z:.2}",
        points.len(),
        t0.elapsed()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// docs/methods.md's "≤ 100 recalls" does not reproduce the saved table: at (1.0, 0.0, 0.5) the
/// recall is s0+1 forever, so lag +1 gets exactly 1/max_recalls. The saved table holds 0.02.
#[test]
fn cmr_saved_table_used_50_recalls() {
    let table = saved_table();
    let idx = [19, 0, 5];
    let saved = table.crp(idx);
    assert!((saved[9] - 0.02).abs() < 1e-12 && (saved[8] - 0.98).abs() < 1e-12);
    let p50 = simulate_point(1.0, 0.0, 0.5, &SimConfig::paper(), 1).unwrap();
    let p100 = simulate_point(1.0, 0.0, 0.5, &SimConfig::methods_text(), 1).unwrap();
    assert!((p50.crp[9] - 0.02).abs() < 1e-12, "{:?}", p50.crp);
    assert!((p100.crp[9] - 0.01).abs() < 1e-12, "{:?}", p100.crp);
}

#[test]
fn cmr_simulation_is_deterministic_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SimConfig {
        trials: 2,
        ..SimConfig::paper()
    };
    let a = CrpTable::cached_or_simulate_with(Some(dir.path()), &cfg, 7, |_, _| {}).unwrap();
    let path = dir.path().join(CrpTable::cache_file_name(&cfg, 7));
    assert!(path.is_file());
    let b = CrpTable::cached_or_simulate_with(Some(dir.path()), &cfg, 7, |_, _| {
        panic!("must load from cache")
    })
    .unwrap();
    // Bitwise, so that NaN entries compare equal: with 2 trials a start can see no lag
    // within ±8 at all (e.g. β_enc = 0.05, where jumps average 20 items), and 0/0 is NaN as
    // in the reference's normalisation.
    let bits = |t: &CrpTable| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b));
    let c = CrpTable::simulate_with(&CmrGrid::paper(), &cfg, 7, |_, _| {}).unwrap();
    assert_eq!(bits(&a), bits(&c), "same seed, different thread schedule");
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| CrpTable::simulate_with(&CmrGrid::paper(), &cfg, 7, |_, _| {}).unwrap());
    assert_eq!(bits(&a), bits(&one_thread), "same seed, one thread");
    let mut n_nan = 0;
    for row in a.data.chunks(N_LAGS) {
        if row.iter().any(|x| x.is_nan()) {
            n_nan += 1;
            continue;
        }
        let s: f64 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-9, "row sums to {s}");
    }
    assert!(n_nan < 50, "{n_nan} NaN rows of {}", a.grid.len());
}

/// The whole table against the saved one (run with `cargo test --test cmr -- --ignored`).
/// The simulated table is cached under the test target's tmp dir, so only the first run pays
/// for the simulation.
#[test]
#[ignore]
#[allow(clippy::needless_range_loop)]
fn cmr_full_table_matches_saved() {
    let table = saved_table();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cmr-cache");
    let cfg = SimConfig::paper();
    let seed = engram::probes::cmr::DEFAULT_SEED;
    let sem_path = cache.join(format!("sem_{}", CrpTable::cache_file_name(&cfg, seed)));
    let t = Instant::now();
    let ours = CrpTable::cached_or_simulate_with(Some(&cache), &cfg, seed, |_, _| {}).unwrap();
    println!(
        "full table (1000 trials, 4620 points) in {:.2?}",
        t.elapsed()
    );
    let sem = match &ours.sem {
        Some(sem) => {
            CrpTable::from_vec(CmrGrid::paper(), sem.clone())
                .unwrap()
                .save_npy(&sem_path)
                .unwrap();
            sem.clone()
        }
        None => match CrpTable::load_npy(&sem_path) {
            Ok(t) => t.data,
            // Cached table without its standard errors: simulate again (same seed, same table).
            Err(_) => CrpTable::simulate_with(&CmrGrid::paper(), &cfg, seed, |_, _| {})
                .unwrap()
                .sem
                .unwrap(),
        },
    };
    let mut max_abs: f64 = 0.0;
    let mut n_fail = 0;
    let cf = |i: usize| {
        let (_, br, g) = ours.grid.params(i / N_LAGS);
        g == 0.0 && (br == 0.0 || br == 1.0)
    };
    let mut z: Vec<(f64, usize)> = Vec::new();
    for i in 0..ours.data.len() {
        let d = (ours.data[i] - table.data[i]).abs();
        max_abs = max_abs.max(d);
        let sg = sigma(sem[i], ours.data[i], table.data[i], &cfg);
        if !cf(i) && sg > 0.0 {
            z.push((d / (std::f64::consts::SQRT_2 * sg), i));
        }
        if d > tolerance(sem[i], ours.data[i], table.data[i], cf(i), &cfg) {
            n_fail += 1;
        }
    }
    z.sort_by(|a, b| b.0.total_cmp(&a.0));
    for &(zi, i) in z.iter().take(8) {
        let (be, br, g) = ours.grid.params(i / N_LAGS);
        println!(
            "  z {zi:.2} at ({be:.2}, {br:.2}, {g:.1}) lag {}: ours {:.3e} saved {:.3e} sem {:.1e}",
            (i % N_LAGS) as i64 - 8,
            ours.data[i],
            table.data[i],
            sem[i]
        );
    }
    println!(
        "max |Δ| = {max_abs:.3e}, max |Δ|/(√2·σ) = {:.2}, entries over tolerance: {n_fail} of {}",
        z.first().map_or(0.0, |z| z.0),
        ours.data.len()
    );
    // 78 540 entries at 5σ: expect ≲ 0.05 false alarms; allow a handful for the approximate sem.
    assert!(n_fail <= 5, "{n_fail} entries over tolerance");
    // The table shipped with engram is this simulation, bit for bit.
    let bits = |d: &[f64]| d.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&ours.data), bits(&CrpTable::shipped().unwrap().data));
}

/// The CMR table shipped inside engram (what `engram heads` uses without `--cmr-table`) is
/// engram's own simulation of the paper's configuration: grid points spread over the grid,
/// simulated again here with their streams (`DEFAULT_SEED ^ i`), give the shipped rows bit for
/// bit (the whole table: the ignored `cmr_full_table_matches_saved`). The shipped table is also
/// checked to be a table: rows of 17 non-negative lags summing to 1.
#[test]
fn the_shipped_table_is_this_simulation() {
    let shipped = CrpTable::shipped().unwrap();
    assert_eq!(shipped.grid, CmrGrid::paper());
    for row in shipped.data.chunks(N_LAGS) {
        assert!(row.iter().all(|&x| x >= 0.0), "{row:?}");
        let s: f64 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-9, "row sums to {s}");
    }
    let grid = CmrGrid::paper();
    let cfg = SimConfig::paper();
    let t = Instant::now();
    // 16 points, a prime stride apart so that every axis varies (closed-form planes included).
    for i in (0..grid.len()).step_by(293) {
        let (be, br, g) = grid.params(i);
        let p = simulate_point(
            be,
            br,
            g,
            &cfg,
            engram::probes::cmr::DEFAULT_SEED ^ i as u64,
        )
        .unwrap();
        let want: Vec<u64> = shipped.crp_flat(i).iter().map(|x| x.to_bits()).collect();
        let got: Vec<u64> = p.crp.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want, "grid point {i} ({be:.2}, {br:.2}, {g:.1})");
    }
    println!("16 points in {:.2?}", t.elapsed());
    // And it is the paper's table up to Monte-Carlo error (0.0056 at most here; a different
    // configuration, e.g. 100 recalls, moves deterministic entries by 0.01).
    let saved = saved_table();
    let worst = (shipped.data.iter().zip(&saved.data))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 0.008, "shipped vs saved: max |Δ| {worst}");
}
