//! `cargo xtask bench --conv`: a greedy convolutional stage's training step
//! (`layerwise_nn::convnet::ConvTrainer`: the new stage's convolution, BatchNorm and ReLU,
//! its k = 1 head, the backward pass and the SGD update; the frozen stages before it are
//! its cached input) on the shapes of `pipelines/cnn.toml`'s stages 1 and 3, batch 128,
//! against the reference product of the stage's im2col shape measured in the same run.
//! A grown stage needs no input gradient, so its convolution costs two products of the
//! same size (`[rows, 9c]·[9c, out]` forward, `[9c, rows]·[rows, out]` for the weight
//! gradient): 4·rows·9c·out useful FLOPs a step.

use crate::bench_reference::matmul_gflops;
use layerwise_core::cnn::{Cnn, CnnHead, ConvStage, Downsample};
use layerwise_nn::convnet::{self, ConvNet, ConvOptimizer, ConvSettings, ConvTrainer, Nhwc, Sgd};
use std::time::Instant;

/// A stage: name, input channels, output channels, side (after its downsampling).
const STAGES: [(&str, usize, usize, usize); 2] =
    [("stage 1 (3→64, 32×32)", 3, 64, 32), ("stage 3 (128→128, 16×16)", 128, 128, 16)];

/// Images per step.
const BATCH: usize = 128;

fn fill(n: usize, seed: u32) -> Vec<f32> {
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

/// Print the table.
pub fn run(seconds: f64) {
    convnet::keep_buffers_resident();
    println!(
        "| conv stage step (batch {BATCH}, grow, k = 1 head) | ms a step | images/s | GFLOP/s | reference product \
         GFLOP/s | ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, c, out, side) in STAGES {
        // A one-stage network whose stage takes the cached input directly.
        let cnn = Cnn {
            input: [c, side, side],
            stages: vec![ConvStage { downsample: Downsample::None, conv: convnet::new_block(c, out, 1) }],
            head: CnnHead { convs: Vec::new(), linear: convnet::new_linear(4 * out, 10, 2) },
        };
        let settings = ConvSettings {
            optimizer: ConvOptimizer::Sgd(Sgd::new(0.01, 0.9, true)),
            weight_decay: 5e-4,
            label_smoothing: 0.1,
        };
        let mut t = ConvTrainer::new(ConvNet::from_cnn(&cnn), 0, settings);
        let s = Nhwc { n: BATCH, h: side, w: side, c };
        let x = fill(s.len(), 3);
        let labels: Vec<u8> = (0..BATCH).map(|i| (i % 10) as u8).collect();
        let rows = BATCH * side * side;
        let flops = 4.0 * (rows * 9 * c * out) as f64;
        let mut best = f64::INFINITY;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds || best == f64::INFINITY {
            let clock = Instant::now();
            std::hint::black_box(t.step(&x, s, &labels, 0.01).ok());
            best = best.min(clock.elapsed().as_secs_f64());
        }
        let reference = matmul_gflops(rows, 9 * c, out, seconds.min(1.0));
        let gflops = flops / best / 1e9;
        println!(
            "| {name} | {:.1} | {:.0} | {gflops:.1} | {reference:.1} | {:.0}% |",
            best * 1e3,
            BATCH as f64 / best,
            100.0 * gflops / reference
        );
    }
}
