//! Shards: a run's steps split over independent processes (Slurm array tasks) that write into
//! one run directory on a shared file system, then merged into one record and page.
//!
//! The assignment is a function of the plan and the shard count only (never of what is already
//! on disk), so every task of an array agrees on it and a rerun of a shard gets the same steps:
//!
//! 1. Steps joined by `after` (a step and everything it needs, transitively) form one *unit*;
//!    every other step is a unit of its own. A unit never spans two shards.
//! 2. Units are placed largest total `cost` first (ties in plan order), each on the shard with
//!    the least cost so far (ties: the lowest shard). With unit costs this deals the units out
//!    round-robin.
//!
//! Within a shard steps run in the usual order (model by model, then model-free), so a shard
//! loads each of its models once.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::plan::PlannedStep;
use crate::{Error, Result};

/// Shard `index` of `count`, counted from 1 (`--shard 2/3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index == 0 || index > count {
            crate::bail!("shard {index}/{count}: the index counts from 1 to the shard count");
        }
        Ok(Shard { index, count })
    }

    /// The count of a record's `I/N` label.
    pub fn count_of(label: &str) -> Option<usize> {
        label.parse::<Shard>().ok().map(|s| s.count)
    }

    /// The file name of the shard's record under `RUN/shards/`.
    pub fn record_name(&self) -> String {
        format!("shard-{}-of-{}.json", self.index, self.count)
    }

    /// The shard of a Slurm array task: `SLURM_ARRAY_TASK_ID` offset by `SLURM_ARRAY_TASK_MIN`
    /// (so `--array=0-2` and `--array=1-3` both give shards 1..3) of `SLURM_ARRAY_TASK_COUNT`.
    /// `None` outside an array job.
    pub fn from_slurm_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(id) = env("SLURM_ARRAY_TASK_ID") else {
            return Ok(None);
        };
        let num = |name: &str, v: &str| -> Result<usize> {
            v.trim()
                .parse()
                .map_err(|_| Error::msg(format!("{name}={v}: not a task number")))
        };
        let id = num("SLURM_ARRAY_TASK_ID", &id)?;
        let count = env("SLURM_ARRAY_TASK_COUNT").ok_or_else(|| {
            Error::msg(
                "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: pass --shard I/N",
            )
        })?;
        let count = num("SLURM_ARRAY_TASK_COUNT", &count)?;
        let min = match env("SLURM_ARRAY_TASK_MIN") {
            Some(v) => num("SLURM_ARRAY_TASK_MIN", &v)?,
            None => 0,
        };
        if id < min {
            crate::bail!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}");
        }
        Shard::new(id - min + 1, count)
            .map(Some)
            .map_err(|e| Error::msg(format!("from the Slurm array environment: {e} (array ids must be consecutive; else pass --shard I/N)")))
    }
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| Error::msg(format!("--shard {s}: expected I/N, e.g. 2/3")))?;
        let parse = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| Error::msg(format!("--shard {s}: expected I/N, e.g. 2/3")))
        };
        let (i, n) = (parse(i)?, parse(n)?);
        Shard::new(i, n).map_err(|_| {
            Error::msg(format!(
                "--shard {s}: the index counts from 1 to the shard count"
            ))
        })
    }
}

/// The units of a plan: groups of step indices joined by `after`, each in plan order, the groups
/// ordered by their first step.
pub fn units(steps: &[PlannedStep]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..steps.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let index: BTreeMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    for (i, s) in steps.iter().enumerate() {
        for dep in &s.after {
            if let Some(&j) = index.get(dep.as_str()) {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..steps.len() {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    let mut out: Vec<Vec<usize>> = groups.into_values().collect();
    out.sort_by_key(|g| g[0]);
    out
}

/// The shard (1-based) of every step of the plan for `count` shards.
pub fn assign(steps: &[PlannedStep], count: usize) -> Vec<usize> {
    let count = count.max(1);
    let units = units(steps);
    let cost = |u: &Vec<usize>| u.iter().map(|&i| steps[i].cost).sum::<f64>();
    let mut order: Vec<usize> = (0..units.len()).collect();
    // Largest first; the sort is stable, so equal costs keep plan order.
    order.sort_by(|&a, &b| cost(&units[b]).total_cmp(&cost(&units[a])));
    let mut load = vec![0.0f64; count];
    let mut shard_of = vec![0usize; steps.len()];
    for u in order {
        let mut best = 0;
        for s in 1..count {
            if load[s] < load[best] {
                best = s;
            }
        }
        load[best] += cost(&units[u]);
        for &i in &units[u] {
            shard_of[i] = best + 1;
        }
    }
    shard_of
}

/// Where a shard ran: recorded in its `RUN/shards/` record and in the merged `batch.json` and
/// run manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// `I/N`.
    pub shard: String,
    pub host: String,
    pub pid: u32,
    /// The process's command line.
    pub command: Vec<String>,
    pub started: String,
    pub finished: Option<String>,
    pub seconds: f64,
    /// The process's peak resident set size (MB) when the shard ended: what its Slurm task's
    /// `--mem` must cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// The Slurm job's variables (`SLURM_JOB_ID`, `SLURM_ARRAY_JOB_ID`, ...) when there are any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slurm: BTreeMap<String, String>,
}

impl ShardInfo {
    /// The shard's record relative to the run root (`shards/shard-I-of-N.json`).
    pub fn record_file(&self) -> Option<String> {
        let s = self.shard.parse::<Shard>().ok()?;
        Some(format!("{}/{}", super::SHARDS_DIR, s.record_name()))
    }

    /// Mark the shard ended now, `seconds` after it started.
    pub fn end(&mut self, finished: Option<String>, seconds: f64) {
        self.finished = finished;
        self.seconds = seconds;
        self.peak_rss_mb = crate::alloc::peak_rss_bytes().map(|b| b as f64 / 1e6);
    }

    /// This process as shard `shard`, started now.
    pub fn this_process(shard: Shard, started: String) -> Self {
        let slurm = [
            "SLURM_JOB_ID",
            "SLURM_ARRAY_JOB_ID",
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_COUNT",
            "SLURM_JOB_NODELIST",
            "SLURM_CPUS_ON_NODE",
            "SLURM_RESTART_COUNT",
        ]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
        ShardInfo {
            shard: shard.to_string(),
            host: hostname(),
            pid: std::process::id(),
            command: std::env::args().collect(),
            started,
            finished: None,
            seconds: 0.0,
            peak_rss_mb: None,
            slurm,
        }
    }
}

/// This machine's host name (`unknown` when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, after: &[&str], cost: f64) -> PlannedStep {
        PlannedStep {
            id: id.into(),
            model: None,
            probe: "toy".into(),
            spec: None,
            params: Default::default(),
            after: after.iter().map(|s| s.to_string()).collect(),
            cost,
        }
    }

    #[test]
    fn shard_parses_and_rejects() {
        assert_eq!(
            "2/3".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 3 }
        );
        for bad in ["0/3", "4/3", "1/0", "x/3", "3", "-1/2", ""] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains("--shard"), "{bad}: {e}");
        }
    }

    #[test]
    fn slurm_environment_gives_the_shard() {
        fn s(vars: &[(&str, &str)]) -> Result<Option<Shard>> {
            Shard::from_slurm_env(&|k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        }
        assert_eq!(s(&[]).unwrap(), None);
        let zero_based = [
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
        ];
        assert_eq!(s(&zero_based).unwrap(), Some(Shard::new(1, 3).unwrap()));
        let one_based = [
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ];
        assert_eq!(s(&one_based).unwrap(), Some(Shard::new(3, 3).unwrap()));
        assert!(s(&[("SLURM_ARRAY_TASK_ID", "1")]).is_err());
        let gap = [
            ("SLURM_ARRAY_TASK_ID", "9"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ];
        assert!(s(&gap).unwrap_err().to_string().contains("consecutive"));
    }

    #[test]
    fn dependent_steps_share_a_shard_and_costs_balance() {
        let steps = vec![
            step("a/train", &[], 4.0),
            step("a/eval", &["a/train"], 1.0),
            step("b/train", &[], 4.0),
            step("b/eval", &["b/train"], 1.0),
            step("x", &[], 1.0),
            step("y", &[], 1.0),
            step("z", &[], 3.0),
        ];
        assert_eq!(
            units(&steps),
            vec![vec![0, 1], vec![2, 3], vec![4], vec![5], vec![6]]
        );
        let s = assign(&steps, 3);
        assert_eq!(s[0], s[1]);
        assert_eq!(s[2], s[3]);
        // Units 5, 5, 3, 1, 1 over 3 shards: 5 | 5 | 3+1+1.
        assert_eq!(s, vec![1, 1, 2, 2, 3, 3, 3]);
        // Every shard count covers every step once, with shards in range.
        for n in 1..=9 {
            let s = assign(&steps, n);
            assert!(s.iter().all(|&x| (1..=n).contains(&x)));
        }
        assert_eq!(assign(&steps, 1), vec![1; 7]);
        // A model-free step after per-model steps pulls them into its unit.
        let mut joined = steps.clone();
        joined.push(step("summary", &["a/eval", "b/eval"], 1.0));
        assert_eq!(units(&joined)[0], vec![0, 1, 2, 3, 7]);
    }
}
