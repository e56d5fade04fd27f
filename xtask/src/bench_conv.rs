//! `cargo xtask bench --conv`: a greedy convolutional stage's training step
//! (`layerwise_nn::convnet::ConvTrainer`: the new stage's convolution, BatchNorm and ReLU,
//! its k = 1 head, the backward pass and the SGD update; the frozen stages before it are
//! its cached input, already downsampled) on the shapes of every stage of
//! `pipelines/cnn.toml`, batch 128 (`--batch` takes a list), each step on the next batch of
//! a shuffled pass over a cached input far larger than any cache ([`POOL_BYTES`], as an
//! epoch reads its 45,000 images), timed as the mean step; against the reference product
//! of the stage's im2col shape measured in the same run. A grown stage needs no input
//! gradient, so its convolution costs two products of the same size (`[rows, 9c]·[9c, out]`
//! forward, `[9c, rows]·[rows, out]` for the weight gradient): 4·rows·9c·out useful FLOPs a
//! step.
//!
//! With `--device cuda` the same step runs on the GPU through the device path
//! (`DeviceConvTrainer`: dfdx ops, cuBLAS products), its input resident, against a dfdx
//! product of the same im2col shape on that device, and a last row times a large square
//! product (the device's SGEMM ceiling). `--json` writes the rows for
//! `scripts/gpu-summary.py`.

use crate::bench_reference::{fastest, matmul_gflops};
use anyhow::{Context, Result};
use dfdx::prelude::*;
use layerwise_core::cnn::{Cnn, CnnHead, CnnSpec, ConvStage, Downsample, StageSpec};
use layerwise_core::pipeline::Pipeline;
use layerwise_nn::conv_kernel::TILE_ROWS;
use layerwise_nn::convnet::{self, ConvNet, ConvSettings, OptimizerSpec};
use layerwise_nn::device::DeviceKind;
use layerwise_nn::Backend;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// The stages of `pipelines/cnn.toml` (read from the working directory's `pipelines/`
/// first, so a copied binary finds the tree it runs in, then from this repository's).
pub fn cnn_stages() -> Result<Vec<StageSpec>> {
    let relative = std::path::PathBuf::from("pipelines/cnn.toml");
    let path = if relative.is_file() { relative } else { crate::repo_root().join("pipelines/cnn.toml") };
    let pipeline = Pipeline::load(&path)?;
    let cnn = pipeline.model.cnn().with_context(|| format!("{}: not a convolutional pipeline", path.display()))?;
    Ok(cnn.stages)
}

/// Each stage's conv block: (label, input channels, output channels, side), after its
/// downsampling, for 3 × 32 × 32 images.
fn stage_shapes(stages: &[StageSpec]) -> Result<Vec<(String, usize, usize, usize)>> {
    let spec = CnnSpec { stages: stages.to_vec(), head_convs: 0 };
    let inputs = spec.conv_inputs([3, 32, 32])?;
    Ok(stages
        .iter()
        .zip(inputs)
        .enumerate()
        .map(|(i, (st, [c, h, _]))| (format!("stage {} ({c}→{}, {h}×{h})", i + 1, st.out), c, st.out, h))
        .collect())
}

/// Bytes of cached input a stage's batches are drawn from (at least one batch): a pipeline
/// epoch's cached input is 0.5–2.9 GB, read in a shuffled order, so a batch is never in
/// cache when its step starts. A step timed on one fixed batch, in cache, ran stage 2 and 3
/// kernels 30–50 % faster than they run in `cnn.toml`'s epochs.
pub const POOL_BYTES: usize = 512 << 20;

/// Images in the cached input drawn from, for images of `image` floats and batch `batch`.
pub fn pool_images(image: usize, batch: usize) -> usize {
    (POOL_BYTES / (4 * image.max(1))).max(batch)
}

/// `n` values, a filled block of up to 16 Mi values repeated (the values do not matter to
/// the timing; filling 512 MB value by value would take longer than the timing).
fn fill_large(n: usize, seed: u32) -> Vec<f32> {
    let block = fill(n.min(1 << 24), seed);
    block.iter().copied().cycle().take(n).collect()
}

/// The rows of batch after batch of shuffled passes over `images` rows (a fixed seed), shuffled
/// as the learner's epochs shuffle theirs (`rand`'s `shuffle` over a ChaCha8 stream).
struct Batches {
    order: Vec<usize>,
    at: usize,
    rng: ChaCha8Rng,
}

impl Batches {
    fn new(images: usize) -> Self {
        Self { order: (0..images).collect(), at: images, rng: ChaCha8Rng::seed_from_u64(0) }
    }

    fn next(&mut self, batch: usize) -> &[usize] {
        if self.at + batch > self.order.len() {
            // A new pass in a new order.
            self.order.shuffle(&mut self.rng);
            self.at = 0;
        }
        self.at += batch;
        &self.order[self.at - batch..self.at]
    }
}

/// The side of the square product timed as a device's ceiling.
const CEILING: usize = 8192;

/// `n` values in [-1, 1] from `seed` (xorshift; the same on every machine).
pub fn fill(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Print the table, on `device`, for each batch size; write its rows to `json` when given.
pub fn run(seconds: f64, device: DeviceKind, batches: &[usize], json: Option<&std::path::Path>) -> Result<()> {
    let shapes = stage_shapes(&cnn_stages()?)?;
    let rows = layerwise_nn::with_device!(device, 0, |dev| Ok::<_, anyhow::Error>(table(
        &dev, seconds, device, &shapes, batches, true
    )))?;
    if let Some(path) = json {
        layerwise_core::atomic::write_json_atomic(path, &rows)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// One stage's step on the host kernels, on the current thread pool, without printing:
/// (label, batch, ms a step, images/s, GFLOP/s, reference GFLOP/s) per stage.
pub fn host_rows(seconds: f64, batch: usize) -> Result<Vec<serde_json::Value>> {
    let shapes = stage_shapes(&cnn_stages()?)?;
    let dev = layerwise_nn::device::cpu(0);
    Ok(table(&dev, seconds, DeviceKind::Cpu, &shapes, &[batch], false))
}

/// GFLOP/s of an `[m, k]·[k, n]` product through dfdx on `dev` (a reference for the device
/// path; each product is waited for by reading back one value of it).
fn device_matmul_gflops<D: Backend>(dev: &D, m: usize, k: usize, n: usize, seconds: f64) -> f64 {
    let a: Tensor<(usize, usize), f32, D> = dev.tensor_from_vec(fill(m * k, 5), (m, k));
    let b: Tensor<(usize, usize), f32, D> = dev.tensor_from_vec(fill(k * n, 6), (k, n));
    let sync = |c: Tensor<(usize, usize), f32, D>| std::hint::black_box(c.sum::<(), _>().as_vec());
    let best = fastest(seconds, 10, || {
        sync(a.clone().matmul(b.clone()));
    });
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// GFLOP/s of the stage's forward product `[rows, 9c]·[9c, out]` in tiles of
/// [`TILE_ROWS`] rows, one a thread (how the host kernels cut it; the
/// patches gathered beforehand, so only the products are timed).
fn tiled_gflops(rows: usize, k: usize, out: usize, seconds: f64) -> f64 {
    use layerwise_nn::host::{matmul_serial, View};
    use rayon::prelude::*;
    let (a, b) = (fill(rows * k, 7), fill(k * out, 8));
    let mut c = vec![0f32; rows * out];
    let run = |c: &mut [f32]| {
        c.par_chunks_mut(TILE_ROWS * out)
            .zip(a.par_chunks(TILE_ROWS * k))
            .for_each(|(ct, at)| matmul_serial(ct, View::rows(at, at.len() / k, k), View::rows(&b, k, out), false))
    };
    let best = fastest(seconds, 1, || {
        run(&mut c);
        std::hint::black_box(&c);
    });
    2.0 * (rows * k * out) as f64 / best / 1e9
}

fn table<D: Backend + 'static>(
    dev: &D,
    seconds: f64,
    device: DeviceKind,
    shapes: &[(String, usize, usize, usize)],
    batches: &[usize],
    print: bool,
) -> Vec<serde_json::Value> {
    convnet::keep_buffers_resident();
    let host = device == DeviceKind::Cpu;
    let kernels = if host { "host kernels" } else { "dfdx device path" };
    let mut rows = Vec::new();
    if print {
        println!(
            "| conv stage step (grow, k = 1 head, SGD Nesterov; {kernels} on {}) | batch | ms a step | images/s | GFLOP/s | \
             reference product GFLOP/s | ratio |",
            device.name()
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    for &batch in batches {
        for (name, c, out, side) in shapes {
            let (c, out, side) = (*c, *out, *side);
            // A one-stage network whose stage takes the cached input directly.
            let cnn = Cnn {
                input: [c, side, side],
                stages: vec![ConvStage { downsample: Downsample::None, conv: convnet::new_block(c, out, 1) }],
                head: CnnHead { convs: Vec::new(), linear: convnet::new_linear(4 * out, 10, 2) },
            };
            let settings = ConvSettings {
                optimizer: OptimizerSpec::Sgd { lr: 0.01, momentum: 0.9, nesterov: true },
                weight_decay: 5e-4,
                label_smoothing: 0.1,
            };
            let image = side * side * c;
            let images = pool_images(image, batch);
            let labels: Vec<u8> = (0..images).map(|i| (i % 10) as u8).collect();
            let mut t = convnet::conv_step(dev, D::KERNELS, ConvNet::from_cnn(&cnn), 0, &settings, None);
            if let Err(e) = t.keep_train(std::borrow::Cow::Owned(fill_large(images * image, 3)), &labels) {
                eprintln!("{name}: {e:#}");
                continue;
            }
            let mut batches = Batches::new(images);
            let m = batch * side * side;
            let flops = 4.0 * (m * 9 * c * out) as f64;
            // A step reads its loss back, so it has finished when it returns. One step
            // unmeasured (buffers, pools), then the mean over the timed steps.
            std::hint::black_box(t.step_rows(batches.next(batch), 0, 0.01).ok());
            let (mut steps, start) = (0u32, Instant::now());
            while start.elapsed().as_secs_f64() < seconds || steps == 0 {
                std::hint::black_box(t.step_rows(batches.next(batch), 0, 0.01).ok());
                steps += 1;
            }
            let mean = start.elapsed().as_secs_f64() / f64::from(steps);
            let reference = if host {
                // The machine's best on this shape: one product over the batch, or in tiles.
                matmul_gflops(m, 9 * c, out, seconds.min(1.0)).max(tiled_gflops(m, 9 * c, out, seconds.min(1.0)))
            } else {
                device_matmul_gflops(dev, m, 9 * c, out, seconds.min(1.0))
            };
            let gflops = flops / mean / 1e9;
            if print {
                println!(
                    "| {name} | {batch} | {:.2} | {:.0} | {gflops:.1} | {reference:.1} | {:.0}% |",
                    mean * 1e3,
                    batch as f64 / mean,
                    100.0 * gflops / reference
                );
            }
            rows.push(serde_json::json!({
                "device": device.name(), "stage": name, "batch": batch, "ms": mean * 1e3,
                "images_per_s": batch as f64 / mean, "gflops": gflops, "reference_gflops": reference,
            }));
        }
    }
    if !host {
        let g = device_matmul_gflops(dev, CEILING, CEILING, CEILING, seconds);
        println!("| SGEMM {CEILING}³ on {} (the ceiling) | | | | {g:.1} | | |", device.name());
        rows.push(serde_json::json!({ "device": device.name(), "stage": format!("SGEMM {CEILING}^3"), "gflops": g }));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::{pool_images, Batches, POOL_BYTES};

    #[test]
    fn batches_cover_every_image_once_a_pass_in_a_new_order() {
        let mut b = Batches::new(12);
        let first: Vec<usize> = (0..3).flat_map(|_| b.next(4).to_vec()).collect();
        let second: Vec<usize> = (0..3).flat_map(|_| b.next(4).to_vec()).collect();
        for pass in [&first, &second] {
            let mut sorted = pass.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..12).collect::<Vec<_>>());
        }
        assert_ne!(first, second, "each pass is shuffled anew");
        assert_ne!(first, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn the_pool_is_larger_than_any_cache_and_at_least_a_batch() {
        // Stage 5's images (256 × 8 × 8 floats): 8,192 of them, 512 MiB.
        assert_eq!(pool_images(256 * 64, 128) * 256 * 64 * 4, POOL_BYTES);
        assert_eq!(pool_images(POOL_BYTES, 128), 128);
    }
}
