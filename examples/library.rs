//! engram as a library: load a model, capture activations (TransformerLens `run_with_cache`),
//! then run the same prompt with interventions applied inside the forward pass.
//!
//!     scripts/fetch-models.sh                                # once, for the default model
//!     cargo run --release --example library [-- MODEL]
//!
//! MODEL is anything `--model` takes (a `.gguf` file, a Hugging Face folder, a Hub repo id or an
//! alias: `smollm2`, `gemma3`, `qwen2`); the default is `smollm2`. When the model is absent the
//! example returns the loader's error instead of panicking.

use engram::candle_core::{IndexOp, D};
use engram::hooks::{Edit, HookFilter, HookPoint, Hooks, Intervention, Positions};
use engram::model::{to_vec_f32, LoadOptions, Model};

fn main() -> engram::Result<()> {
    let spec = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "smollm2".to_string());
    let model = Model::load(&spec, &LoadOptions::default()).map_err(|e| {
        engram::Error::msg(format!(
            "cannot load model `{spec}`: {e} (scripts/fetch-models.sh fetches the default one)"
        ))
    })?;
    let cfg = model.cfg();
    let layer = cfg.n_layers / 2;
    println!(
        "{spec}: {} layers, d_model {}, {} heads, loaded in {:.2} s",
        cfg.n_layers, cfg.d_model, cfg.n_heads, model.load_seconds
    );

    // Capture every layer's attention pattern and residual stream (glob filters).
    let batch = model.batch(&["The Eiffel Tower is located in the city of"])?;
    let filter = HookFilter::new(&["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post"]);
    let (logits, cache) = model.run_with_cache(&batch, &filter)?;
    let pattern = cache.expect(HookPoint::Pattern(layer))?; // [batch, head, query, key]
    let resid = cache.expect(HookPoint::ResidPost(layer))?; // [batch, pos, d_model]
    println!(
        "logits {:?}; {} hook points captured; blocks.{layer}.attn.hook_pattern {:?}; \
         blocks.{layer}.hook_resid_post {:?}",
        logits.dims(),
        cache.len(),
        pattern.dims(),
        resid.dims()
    );

    // Interventions: zero-ablate head 0 of `layer` (its slice of hook_z, also under grouped-query
    // attention) and project a direction out of the residual stream at the last position. The
    // direction here is just the captured last-position residual, for illustration.
    let t = resid.dim(1)?;
    let direction = resid.i((0, t - 1))?; // [d_model]
    let mut hooks = Hooks::none().with(Intervention::zero_head(layer, 0)).with(
        Intervention::new(HookPoint::ResidPost(layer), Edit::ProjectOut { direction })
            .at(Positions::Last(1)),
    );
    let edited = model.forward(&batch, &mut hooks)?;

    // Compare the next-token prediction with and without the interventions.
    let tok = model.tokenizer()?;
    for (name, l) in [("clean", &logits), ("edited", &edited)] {
        let last = l.i((0, t - 1))?; // [vocab]
        let id = last.argmax(D::Minus1)?.to_scalar::<u32>()?;
        let top = to_vec_f32(&last)?[id as usize];
        println!(
            "{name:>6}: next token {:?} (logit {top:.3})",
            tok.decode(&[id], false)?
        );
    }
    Ok(())
}
