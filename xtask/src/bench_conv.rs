//! `cargo xtask bench --conv`: the convolutional host kernels (`layerwise_nn::conv`) on the
//! shapes of a greedy CNN's stages, against the reference product of their im2col shape
//! measured in the same run. A 3 × 3 convolution's forward and backward are three products
//! of the same size (`[rows, 9c]·[9c, out]` and its two transposed relatives), 2·rows·9c·out
//! FLOPs each: the reference is one such product, timed alone.

use crate::bench_reference::matmul_gflops;
use layerwise_nn::conv::{conv3x3_backward, conv3x3_forward, Nchw};
use std::time::Instant;

/// One stage shape: batch, input channels, output channels, side.
const STAGES: [(&str, usize, usize, usize, usize); 3] = [
    ("stage 1 (3→64, 32×32)", 32, 3, 64, 32),
    ("stage 2 (64→128, 16×16)", 32, 64, 128, 16),
    ("stage 3 (128→128, 16×16)", 32, 128, 128, 16),
];

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
    println!("| conv stage (batch 32) | forward + backward ms | GFLOP/s | reference product GFLOP/s | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, n, c, out, side) in STAGES {
        let s = Nchw { n, c, h: side, w: side };
        let x = fill(s.len(), 1);
        let w = fill(out * c * 9, 2);
        let dy = fill(n * out * side * side, 3);
        let rows = n * side * side;
        let flops = 3.0 * 2.0 * (rows * 9 * c * out) as f64;
        let mut best = f64::INFINITY;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds || best == f64::INFINITY {
            let t = Instant::now();
            let (y, cols) = conv3x3_forward(&x, s, &w, out);
            let (dx, dw) = conv3x3_backward(&dy, &cols, s, &w, out);
            std::hint::black_box((y, dx, dw));
            best = best.min(t.elapsed().as_secs_f64());
        }
        let reference = matmul_gflops(rows, 9 * c, out, seconds.min(1.0));
        let gflops = flops / best / 1e9;
        println!("| {name} | {:.2} | {gflops:.1} | {reference:.1} | {:.0}% |", best * 1e3, 100.0 * gflops / reference);
    }
}
