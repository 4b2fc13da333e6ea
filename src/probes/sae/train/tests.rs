use super::*;
use candle_core::Var;

/// What a gradient check covers besides the kind.
#[derive(Clone, Copy, Default)]
struct Case {
    sparse: bool,
    /// A transcoder to a target of width 6 (with a skip connection when `skip`).
    transcoder: bool,
    skip: bool,
    /// Latents 0..12 dead, so the AuxK loss is on (TopK kinds).
    dead: bool,
}

fn t(v: Vec<f32>, shape: impl Into<candle_core::Shape>) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A 0/1 mask `[b, n]` of the entries `keep` selects from detached pre-activations.
fn mask_of(pre: &Tensor, keep: impl Fn(&[f32], usize) -> Vec<bool>) -> Tensor {
    let (b, n) = pre.dims2().unwrap();
    let v: Vec<f32> = pre.flatten_all().unwrap().to_vec1().unwrap();
    let m: Vec<f32> = keep(&v, n)
        .into_iter()
        .map(|k| if k { 1.0 } else { 0.0 })
        .collect();
    t(m, (b, n))
}

/// The hand-written backward against candle's autograd on the same loss, the threshold's
/// straight-through estimator written as a zero-valued surrogate whose τ-derivative is the
/// rectangle-kernel pseudo-derivative; TopK selections (per row, per batch, AuxK's among the
/// dead latents) are fixed masks from the detached pre-activations.
fn check(kind: SaeKind, case: Case) {
    let dev = Device::Cpu;
    let (b, d, n) = (64, 8, 24);
    let d_out = if case.transcoder { 6 } else { d };
    let mut rng = StdRng::seed_from_u64(9);
    let params = TrainParams {
        kind,
        dict_size: Some(n),
        k: 5,
        bandwidth: 0.5,
        matryoshka_widths: vec![4, 10],
        skip: case.skip,
        target: case.transcoder.then(|| "y".to_string()),
        aux_k: Some(3),
        aux_k_coeff: 0.25,
        dead_after: 100,
        ..Default::default()
    };
    let mut tr = Trainer::new(params, d, d_out, &vec![0.1; d_out], &dev).unwrap();
    tr.b_enc = t(randn(&mut rng, n), n);
    tr.w_dec = (t(randn(&mut rng, n * d_out), (n, d_out)) * 0.5).unwrap();
    if kind == SaeKind::Threshold {
        let th: Vec<f32> = (0..n).map(|i| 0.3 + 0.05 * i as f32).collect();
        tr.log_th = Some(t(th, n).log().unwrap());
    }
    if case.skip {
        tr.w_skip = Some((t(randn(&mut rng, d_out * d), (d_out, d)) * 0.3).unwrap());
    }
    let dead: Vec<usize> = if case.dead { (0..12).collect() } else { vec![] };
    if case.dead {
        tr.samples = 1000;
        for &j in &dead {
            tr.since_fired[j] = 500;
        }
    }
    let x = t(randn(&mut rng, b * d), (b, d));
    let y = case
        .transcoder
        .then(|| t(randn(&mut rng, b * d_out), (b, d_out)));
    let lam = 0.7;
    tr.sparse_override = Some(case.sparse);
    let g = tr.gradients(&x, y.as_ref(), lam).unwrap();
    let y = y.unwrap_or_else(|| x.clone());

    let v = |t: &Tensor| Var::from_tensor(t).unwrap();
    let (we, wd, be, bd) = (v(&tr.w_enc), v(&tr.w_dec), v(&tr.b_enc), v(&tr.b_dec));
    let lt = tr.log_th.as_ref().map(v);
    let ws = tr.w_skip.as_ref().map(v);
    let pre = x.matmul(&we).unwrap().broadcast_add(&be).unwrap();
    let pos = pre.gt(0f32).unwrap().to_dtype(DType::F32).unwrap();
    let bf = b as f64;
    let (z, penalty) = match kind {
        SaeKind::Relu => {
            let z = pre.relu().unwrap();
            let p = (z.sum_all().unwrap() * (lam / bf)).unwrap();
            (z, p)
        }
        SaeKind::TopK => {
            let m = (topk_mask(&pre.detach(), 5).unwrap() * &pos).unwrap();
            ((&pre * m).unwrap(), Tensor::new(0f32, &dev).unwrap())
        }
        SaeKind::BatchTopK | SaeKind::Matryoshka => {
            let m = mask_of(&pre.detach(), |v, _| {
                let mut s: Vec<f32> = v.iter().copied().filter(|&x| x > 0.0).collect();
                s.sort_by(|a, b| b.total_cmp(a));
                let cut = s.get(5 * b).copied().unwrap_or(0.0);
                v.iter().map(|&x| x > 0.0 && x > cut).collect()
            });
            ((&pre * m).unwrap(), Tensor::new(0f32, &dev).unwrap())
        }
        SaeKind::Threshold => {
            let tau = lt.as_ref().unwrap().exp().unwrap();
            let mask = (pre
                .broadcast_gt(&tau)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                * &pos)
                .unwrap();
            let u = (pre.detach().broadcast_sub(&tau).unwrap() / 0.5).unwrap();
            let h = ((&u + 0.5).unwrap().relu().unwrap() - (&u - 0.5).unwrap().relu().unwrap())
                .unwrap();
            let ste = (&h - h.detach()).unwrap();
            let z = ((&pre * &mask).unwrap() + ste.broadcast_mul(&tau.detach()).unwrap()).unwrap();
            let l0 = (mask.sum_all().unwrap() + ste.sum_all().unwrap()).unwrap();
            (z, (l0 * (lam / bf)).unwrap())
        }
    };
    let mut base = bd.as_tensor().broadcast_as((b, d_out)).unwrap();
    if let Some(ws) = &ws {
        base = (base + x.matmul(&ws.t().unwrap()).unwrap()).unwrap();
    }
    let sq = |r: Tensor| (r.sqr().unwrap().sum_all().unwrap() / bf).unwrap();
    let xhat = (z.matmul(&wd).unwrap() + &base).unwrap();
    let mut loss = (sq((&xhat - &y).unwrap()) + penalty).unwrap();
    if kind == SaeKind::Matryoshka {
        for e in [4, 10] {
            let zi = z.narrow(1, 0, e).unwrap();
            let xi = (zi.matmul(&wd.narrow(0, 0, e).unwrap()).unwrap() + &base).unwrap();
            loss = (loss + sq((xi - &y).unwrap())).unwrap();
        }
    }
    if case.dead && kind.selects() {
        let dead = dead.clone();
        let m = mask_of(&pre.detach(), |v, n| {
            let mut keep = vec![false; v.len()];
            for (r, row) in v.chunks(n).enumerate() {
                let mut c: Vec<usize> = dead.iter().copied().filter(|&j| row[j] > 0.0).collect();
                c.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                for &j in c.iter().take(3) {
                    keep[r * n + j] = true;
                }
            }
            keep
        });
        let za = (pre.relu().unwrap() * m).unwrap();
        let err = (&y - &xhat).unwrap().detach();
        let s = (12.0f64 / 3.0).min(1.0) * 0.25;
        let aux = (sq((za.matmul(&wd).unwrap() - err).unwrap()) * s).unwrap();
        assert!(g.aux_loss > 0.0, "{kind:?}: no AuxK loss with dead latents");
        let al: f32 = aux.to_scalar().unwrap();
        assert!((g.aux_loss - al as f64).abs() < 1e-4 * (al as f64).max(1.0));
        loss = (loss + aux).unwrap();
    }
    let grads = loss.backward().unwrap();
    let what = format!(
        "{kind:?} sparse={} transcoder={} skip={} dead={}",
        case.sparse, case.transcoder, case.skip, case.dead
    );
    let close = |a: &Tensor, b: &Tensor, name: &str| {
        let diff: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(scale > 0.0, "{what} {name}: zero gradient");
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "{what} {name}: {diff} (scale {scale})"
        );
    };
    close(&g.w_enc, grads.get(&we).unwrap(), "W_enc");
    close(&g.w_dec, grads.get(&wd).unwrap(), "W_dec");
    close(&g.b_enc, grads.get(&be).unwrap(), "b_enc");
    close(&g.b_dec, grads.get(&bd).unwrap(), "b_dec");
    if let Some(ws) = &ws {
        close(g.w_skip.as_ref().unwrap(), grads.get(ws).unwrap(), "W_skip");
    }
    let l: f32 = loss.to_scalar().unwrap();
    assert!(
        (g.loss - l as f64).abs() < 1e-3 * (l as f64).abs().max(1.0),
        "{what}: loss {} vs {l}",
        g.loss
    );
    if let Some(lt) = &lt {
        close(
            g.log_threshold.as_ref().unwrap(),
            grads.get(lt).unwrap(),
            "log τ",
        );
    }
}

#[test]
fn backward_matches_autograd() {
    for kind in SaeKind::ALL {
        for sparse in [false, true] {
            let case = Case {
                sparse,
                ..Default::default()
            };
            check(kind, case);
            check(
                kind,
                Case {
                    transcoder: true,
                    skip: true,
                    ..case
                },
            );
            if kind.selects() {
                check(kind, Case { dead: true, ..case });
            }
        }
    }
    check(
        SaeKind::Relu,
        Case {
            transcoder: true,
            ..Default::default()
        },
    );
}

#[test]
fn batch_cut_keeps_the_largest() {
    let v = [0.5f32, -1.0, 3.0, 2.0, 0.0, 1.0];
    assert_eq!(fused::batch_cut(&v, 2), 1.0);
    assert_eq!(fused::batch_cut(&v, 4), 0.0);
    assert_eq!(fused::batch_cut(&v, 10), 0.0);
    assert!(matryoshka_levels(&[8, 4], 16).is_err());
    assert_eq!(matryoshka_levels(&[], 64).unwrap(), vec![4, 8, 16, 32, 64]);
    assert_eq!(matryoshka_levels(&[3, 10], 16).unwrap(), vec![3, 10, 16]);
}
