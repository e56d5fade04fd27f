//! What the convolutional tests share: random values and a small network.
#![allow(dead_code)]

use layerwise_core::cnn::{Cnn, CnnHead, ConvStage, Downsample};
use layerwise_nn::convnet::{new_block, new_linear, ConvNet};
use rand::{Rng, SeedableRng};

/// `n` values uniform in [-1, 1), from `seed`.
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// A small network on 2 × 8 × 8 images: psi, a conv; max-pooling, a conv; a conv; a head
/// conv; 3 classes. BatchNorm's γ and β are not the defaults, and with
/// `running_stats` neither are its running statistics.
pub fn small_net(running_stats: bool) -> ConvNet {
    let input = [2, 8, 8];
    let specs = [(Downsample::Psi, 8, 5), (Downsample::Maxpool, 5, 6), (Downsample::None, 6, 4)];
    let stages = specs
        .iter()
        .enumerate()
        .map(|(i, &(d, cin, cout))| {
            let mut conv = new_block(cin, cout, 10 + i as u64);
            conv.bn.weight = random(cout, 20 + i as u64).iter().map(|v| 1.0 + 0.3 * v).collect();
            conv.bn.bias = random(cout, 30 + i as u64).iter().map(|v| 0.2 * v).collect();
            if running_stats {
                conv.bn.running_mean = random(cout, 50 + i as u64).iter().map(|v| 0.1 * v).collect();
                conv.bn.running_var = random(cout, 60 + i as u64).iter().map(|v| 1.0 + 0.5 * v).collect();
            }
            ConvStage { downsample: d, conv }
        })
        .collect();
    let cnn = Cnn { input, stages, head: CnnHead { convs: vec![new_block(4, 4, 40)], linear: new_linear(16, 3, 41) } };
    ConvNet::from_cnn(&cnn)
}
