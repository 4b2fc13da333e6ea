//! `engram cmr-fit`: fit CMR to head lag-CRPs computed elsewhere (an `.npy` array
//! `[layers, heads, 16]` over lags −8..+7, as the CMR study saved them), with the head probe's
//! outputs.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::cmr::{CmrFitter, CrpTable};
use super::heads::{self, HeadRow, HeadsReport, N_LAGS};
use super::{Context, ModelUse, Probe, Report};
use crate::{Error, Result};

/// Parameters of `engram cmr-fit`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CmrFitParams {
    /// The head lag-CRP array (.npy, [layers, heads, 16]).
    pub crp: PathBuf,
    /// CMR lag-CRP table (.npy [20,21,11,17]); default: engram's own simulation, cached.
    pub table: Option<PathBuf>,
}

/// `engram cmr-fit`.
pub struct CmrFit;

impl Probe for CmrFit {
    const NAME: &'static str = "cmr-fit";
    type Params = CmrFitParams;
    type Report = CmrFitReport;

    fn model_use(_: &CmrFitParams) -> ModelUse {
        ModelUse::None
    }

    fn check(p: &CmrFitParams) -> Result<()> {
        if p.crp.as_os_str().is_empty() {
            crate::bail!("cmr-fit: give --crp FILE.npy");
        }
        let crp = crate::data::require_file(&p.crp, "crp")?;
        crate::probes::cmr::table::check_npy_size(&crp)?;
        if let Some(t) = &p.table {
            let t = crate::data::require_file(t, "table")?;
            crate::probes::cmr::table::check_npy_size(&t)?;
        }
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &CmrFitParams) -> Result<CmrFitReport> {
        let crp = crate::data::locate(&p.crp);
        let arr =
            Tensor::read_npy(&crp).map_err(|e| Error::msg(format!("{}: {e}", crp.display())))?;
        let dims = arr.dims().to_vec();
        if dims.len() != 3 || dims[2] != N_LAGS {
            crate::bail!(
                "{}: expected an array [layers, heads, 16], got {:?}",
                crp.display(),
                dims
            );
        }
        let (nl, nh) = (dims[0], dims[1]);
        let v: Vec<f64> = arr.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let table = heads::cmr_table(p.table.as_deref(), cx.progress)?;
        let fitter = CmrFitter::new(&table);
        let mut rows = vec![];
        for l in 0..nl {
            for h in 0..nh {
                let lag: Vec<f64> = v[(l * nh + h) * N_LAGS..(l * nh + h + 1) * N_LAGS].to_vec();
                let fit = fitter.fit(&lag);
                rows.push(HeadRow {
                    layer: l,
                    head: h,
                    induction_score: f64::NAN,
                    prev_token_score: f64::NAN,
                    duplicate_score: f64::NAN,
                    copying_score: f64::NAN,
                    lag_probs: vec![f64::NAN; N_LAGS],
                    lag_scores: lag,
                    fit,
                });
            }
        }
        // The study's files are named MODEL.CRP_scores.npy.
        let name = crp
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let model = name
            .split(".CRP_scores")
            .next()
            .unwrap_or(&name)
            .trim_end_matches(".npy")
            .to_string();
        let report = HeadsReport {
            model,
            n_layers: nl,
            n_heads: nh,
            heads: rows,
            tokens: vec![],
            token_strs: vec![],
            loss_first_copy: f64::NAN,
            loss_second_copy: f64::NAN,
            ablation: None,
            notes: vec![],
            patterns: vec![],
        };
        Ok(CmrFitReport { report, table })
    }
}

/// The fits, as a head report without the scores a model would give.
pub struct CmrFitReport {
    pub report: HeadsReport,
    pub table: CrpTable,
}

impl Report for CmrFitReport {
    fn write(&self, dir: &Path) -> Result<Vec<String>> {
        heads::write_outputs(&self.report, Some(&self.table), dir)
    }

    fn notes(&self) -> Vec<String> {
        let (like, strict, per_layer) = heads::cmr_shares(&self.report.heads, self.report.n_layers);
        vec![format!(
            "share < 0.5: {like:.4}, share < 0.1: {strict:.4}, per layer: {per_layer:?}"
        )]
    }

    fn summary(&self) -> Vec<String> {
        heads::summary_lines(&self.report)
    }
}
