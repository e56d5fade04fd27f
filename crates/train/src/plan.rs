//! Planning a run: what a regime freezes, trains and creates, and the memory check
//! made before anything is allocated.

use crate::options::TrainOptions;
use anyhow::{bail, Result};
use layerwise_core::checkpoint::{CheckpointMeta, Dense, Mlp};
use layerwise_core::config::{HeadMode, Objective, Regime};
use layerwise_core::dataset::Dataset;
use layerwise_core::mix_seed;
use layerwise_nn::{glorot_dense, CHUNK};

/// The network a regime trains, on the host: frozen layers, trainable layers, the output
/// layer and whether it trains. The regime is data: one epoch loop trains any of them.
pub(crate) struct Plan {
    pub(crate) depth: usize,
    pub(crate) prefix: Vec<Dense>,
    pub(crate) trainable: Vec<Dense>,
    pub(crate) head: Dense,
    pub(crate) head_trains: bool,
}

/// Build what `opts.regime` trains from the parent (if any).
pub(crate) fn plan(opts: &TrainOptions, ds: &Dataset, parent: Option<&(Mlp, CheckpointMeta)>) -> Result<Plan> {
    let cfg = &opts.config;
    let classes = ds.meta.num_classes();
    let rows = ds.meta.split_sizes.train + ds.meta.split_sizes.val;
    // Refuse what would not fit in memory before allocating any of it.
    let fits = |depth: usize, inputs: usize, width: usize, cached: bool| {
        check_memory(depth, inputs, width, cfg.batch_size, if cached { rows } else { 0 })
    };
    if cfg.objective == Objective::Autoencoder {
        if opts.regime != Regime::Grow {
            bail!(
                "the autoencoder objective pretrains one new layer without labels, so it needs --regime grow; \
                 `{}` trains with the labels end to end: use --objective supervised for it (fine-tune an \
                 autoencoder-pretrained checkpoint with --regime finetune --objective supervised)",
                opts.regime.name()
            );
        }
        if classes < 2 {
            bail!(
                "{}: the dataset names {classes} classes, but the autoencoder objective's probe is trained with the \
                 labels: prepare a dataset with its labels",
                opts.data.display()
            );
        }
    }
    if opts.depth.is_some() && opts.regime != Regime::Scratch {
        bail!("--depth sets the size of a `scratch` network; `{}` takes its depth from --from", opts.regime.name());
    }
    match (opts.regime, parent) {
        (Regime::Grow, None) => {
            let width = cfg.width_at(1);
            fits(1, ds.meta.input_size(), width, false)?;
            let seed = |layer: u64| mix_seed(cfg.seed, &[1, layer]);
            Ok(Plan {
                depth: 1,
                prefix: Vec::new(),
                trainable: vec![glorot_dense(ds.meta.input_size(), width, seed(0))],
                head: glorot_dense(width, classes, seed(1)),
                head_trains: true,
            })
        }
        (Regime::Grow, Some((model, meta))) => {
            let depth = model.depth() + 1;
            let seed = |layer: u64| mix_seed(cfg.seed, &[depth as u64, layer]);
            let last = model.hidden.last().map_or(model.input_size(), |l| l.outputs);
            let width = cfg.width_at(depth);
            fits(depth, last, width, true)?;
            let new_layer = glorot_dense(last, width, seed(0));
            let (head, head_trains) = match cfg.head {
                // The autoencoder objective's probe is a new output layer at every depth.
                _ if cfg.objective == Objective::Autoencoder => (glorot_dense(width, classes, seed(1)), true),
                HeadMode::Fresh => (glorot_dense(width, classes, seed(1)), true),
                mode => {
                    if model.head.inputs != width {
                        bail!(
                            "head mode `{}` keeps the depth-{} output layer, which takes {} inputs, but the new layer is {} wide: \
                             use --width {} or --head fresh",
                            mode.name(), meta.depth, model.head.inputs, width, model.head.inputs
                        );
                    }
                    (model.head.clone(), mode == HeadMode::Retrain)
                }
            };
            Ok(Plan { depth, prefix: model.hidden.clone(), trainable: vec![new_layer], head, head_trains })
        }
        (Regime::Finetune, Some((model, _))) => {
            for l in &model.hidden {
                fits(model.depth(), l.inputs, l.outputs, false)?;
            }
            Ok(Plan {
                depth: model.depth(),
                prefix: Vec::new(),
                trainable: model.hidden.clone(),
                head: model.head.clone(),
                head_trains: true,
            })
        }
        (Regime::Finetune, None) | (Regime::Scratch, Some(_)) => Err(wrong_from(opts.regime)),
        (Regime::Scratch, None) => {
            let depth = scratch_depth(opts)?;
            let seed = |layer: u64| mix_seed(cfg.seed, &[depth as u64, 100 + layer]);
            // Layer i takes the previous layer's width (the images, first).
            let shapes: Vec<(usize, usize)> = (1..=depth)
                .scan(ds.meta.input_size(), |inputs, d| {
                    let shape = (*inputs, cfg.width_at(d));
                    *inputs = shape.1;
                    Some(shape)
                })
                .collect();
            for &(inputs, width) in &shapes {
                fits(depth, inputs, width, false)?;
            }
            let trainable = shapes
                .iter()
                .enumerate()
                .map(|(i, &(inputs, width))| glorot_dense(inputs, width, seed(i as u64)))
                .collect();
            Ok(Plan {
                depth,
                prefix: Vec::new(),
                trainable,
                head: glorot_dense(cfg.width_at(depth), classes, seed(99)),
                head_trains: true,
            })
        }
    }
}

/// Why a regime cannot take (or cannot do without) `--from`.
pub(crate) fn wrong_from(regime: Regime) -> anyhow::Error {
    match regime {
        Regime::Finetune => anyhow::anyhow!("--regime finetune trains a checkpoint end to end: give it with --from"),
        Regime::Scratch => {
            anyhow::anyhow!("--regime scratch trains a fresh network: drop --from (and give its size with --depth)")
        }
        Regime::Grow => anyhow::anyhow!("internal: --regime grow takes --from or not"),
    }
}

/// The depth of a `scratch` network: `--depth`, 1 by default, within its limit.
pub(crate) fn scratch_depth(opts: &TrainOptions) -> Result<usize> {
    let depth = opts.depth.unwrap_or(1);
    if depth == 0 {
        bail!("--depth must be at least 1");
    }
    layerwise_core::config::check_limit("depth", depth, layerwise_core::config::MAX_DEPTH)?;
    Ok(depth)
}

/// Bytes a layer's training needs, roughly: its weights six times over (parameters,
/// gradient, Adam's two moments, the fused host update's copies), the activations of a
/// batch and of an evaluation chunk, and `cached_rows` rows of cached frozen features.
pub fn memory_needed(inputs: usize, width: usize, batch: usize, cached_rows: usize) -> f64 {
    let (i, w) = (inputs as f64, width as f64);
    4.0 * (6.0 * i * w + 6.0 * batch as f64 * w + 2.0 * CHUNK as f64 * w + cached_rows as f64 * i)
}

/// Memory this machine can still give (`MemAvailable`, or a cgroup's limit when lower);
/// `None` where it cannot be read.
pub fn memory_available() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let mut avail = kib * 1024.0;
    if let Some(limit) =
        std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|t| t.trim().parse::<f64>().ok())
    {
        avail = avail.min(limit);
    }
    Some(avail)
}

/// Refuse a width whose training would not fit in memory, before allocating anything
/// (a huge width would otherwise abort on allocation, or be killed by the kernel). The
/// advice names what takes the most: the layer (width), the batch, or the cached features.
pub(crate) fn check_memory(depth: usize, inputs: usize, width: usize, batch: usize, rows: usize) -> Result<()> {
    let need = memory_needed(inputs, width, batch, rows);
    let gib = |b: f64| b / (1u64 << 30) as f64;
    if let Some(avail) = memory_available() {
        if need > avail {
            let layer = memory_needed(inputs, width, 0, 0);
            let batch_part = memory_needed(0, width, batch, 0) - memory_needed(0, width, 0, 0);
            let cache = memory_needed(inputs, 0, 0, rows);
            let advice = if batch_part >= layer && batch_part >= cache {
                format!(
                    "the batch of {batch} takes {:.1} GiB of it: use a smaller --batch-size (`batch_size`)",
                    gib(batch_part)
                )
            } else if cache >= layer {
                format!(
                    "the cached input of {rows} rows takes {:.1} GiB of it: use fewer images (`data.limit_train`) or a \
                     narrower previous layer",
                    gib(cache)
                )
            } else {
                format!(
                    "the {inputs}×{width} layer and its state take {:.1} GiB of it: use a smaller --width",
                    gib(layer)
                )
            };
            bail!(
                "depth {depth} with width {width} and batch size {batch} needs about {:.1} GiB of memory, but this \
                 machine has {:.1} GiB available; {advice}",
                gib(need),
                gib(avail)
            );
        }
    }
    Ok(())
}

/// Refuse a convolutional depth whose cached features (`cache` bytes, 0 when not cached)
/// and batch (`batch_bytes`) would not fit in memory, naming what to change.
pub(crate) fn fits_memory(depth: usize, cache: f64, batch_bytes: f64, batch: usize) -> Result<()> {
    let gib = |b: f64| b / (1u64 << 30) as f64;
    if let Some(avail) = memory_available() {
        if cache + batch_bytes > avail {
            let advice = if batch_bytes >= cache {
                format!(
                    "the batch of {batch} takes {:.1} GiB of it: use a smaller --batch-size (`batch_size`)",
                    gib(batch_bytes)
                )
            } else {
                format!(
                    "the cached frozen features take {:.1} GiB of it: use fewer images (`data.limit_train`) or \
                     augment = \"flip-crop\" (recomputed per batch, not cached)",
                    gib(cache)
                )
            };
            bail!(
                "depth {depth} needs about {:.1} GiB of memory, but this machine has {:.1} GiB available; {advice}",
                gib(cache + batch_bytes),
                gib(avail)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_memory_advice_names_what_takes_the_memory() {
        // A batch too large is the batch size's fault, not the width's (RELIABILITY.md).
        let err = format!("{:#}", super::check_memory(2, 256, 1 << 16, 1 << 20, 0).unwrap_err());
        assert!(err.contains("--batch-size") && !err.contains("--width"), "{err}");
        let err = format!("{:#}", super::check_memory(2, 1 << 20, 1 << 20, 1, 0).unwrap_err());
        assert!(err.contains("--width"), "{err}");
        let err = format!("{:#}", super::check_memory(2, 1 << 20, 1, 1, 1 << 20).unwrap_err());
        assert!(err.contains("limit_train"), "{err}");
    }
}
