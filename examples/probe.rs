//! A probe through the library: the head probe on a model (default `smollm2`), run by the same
//! runner the CLI and suites use, into a folder (default `runs/probe-example`); then a second
//! probe by name and parameter map, as a suite step runs, on the model the session still holds.
//!
//!     cargo run --release --example probe [-- MODEL [OUT]]

use engram::model::ModelSpec;
use engram::probes::heads::{Heads, HeadsParams};
use engram::probes::{self, ParamMap, Session};

fn main() -> engram::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "smollm2".into());
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| "runs/probe-example".into()));

    let mut session = Session::new(engram::progress::Progress::quiet());
    let spec = ModelSpec::of(model);
    let params = HeadsParams {
        seq_len: 30,
        batch: 8,
        // The paper's CMR table (without it the first run simulates one, minutes, then caches it).
        cmr_table: Some("notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy".into()),
        ..Default::default()
    };
    let outcome = probes::run::<Heads>(&mut session, Some(&spec), &params, &out.join("heads"))?;
    for line in &outcome.summary {
        println!("{line}");
    }
    println!("files: {:?}", outcome.manifest.files);

    // By name, from a key → value map (a suite's `args`): the model is not loaded again.
    let mut given = ParamMap::new();
    given.insert("seq-len".into(), 20.into());
    given.insert("seed".into(), 1.into());
    given.insert(
        "cmr-table".into(),
        "notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy".into(),
    );
    let step = probes::step("heads", &given)?;
    let again = step.run(&mut session, Some(&spec), &out.join("heads-seed1"))?;
    println!(
        "second run: {} (load timed: {})",
        again.summary.first().cloned().unwrap_or_default(),
        again.manifest.timings.iter().any(|t| t.step == "load")
    );
    Ok(())
}
