//! Convolutional stages through the training stage: a grown stage's frozen tensors are its
//! parent's bytes, the same command gives the same bytes, an interrupted stage resumes to
//! the bytes of an uninterrupted one, fine-tuning and scratch train the same architecture,
//! and a parent of another stage list is refused by name.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_core::checkpoint::{load_cnn, read_checkpoint_meta};
use layerwise_core::cnn::CnnSpec;
use layerwise_core::config::{LrSchedule, Optimizer, Regime, TrainConfig};
use layerwise_core::st::MappedSafetensors;
use layerwise_train::state::STATE_FILE;
use layerwise_train::{train, STOP_AFTER_EPOCH_ENV};
use std::path::Path;

mod common;
use common::Fixture;

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: 32,
        lr: 0.05,
        optimizer: Optimizer::Sgd,
        nesterov: true,
        weight_decay: 5e-4,
        label_smoothing: 0.1,
        lr_schedule: LrSchedule::Cosine,
        seed: 3,
        cnn: Some(CnnSpec {
            stages: vec!["4".parse().unwrap(), "maxpool:6".parse().unwrap(), "psi:5".parse().unwrap()],
            head_convs: 1,
        }),
        ..TrainConfig::default()
    }
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn conv_stages_grow_frozen_bit_for_bit_and_resume_to_the_same_bytes() {
    let f = Fixture::new(120, 40, 20);
    let d1 = train(&f.options(None, "d1", config())).unwrap();
    let d2 = train(&f.options(Some(&d1.checkpoint), "d2", config())).unwrap();
    assert_eq!((d2.meta.depth, d2.meta.version), (2, 2));
    assert_eq!(d2.meta.frozen, ["stages.0"]);
    // The frozen stage's tensors are the parent's bytes (BatchNorm's running statistics too).
    let (a, b) = (
        MappedSafetensors::open(&d1.checkpoint, "layerwise-checkpoint", "checkpoint").unwrap(),
        MappedSafetensors::open(&d2.checkpoint, "layerwise-checkpoint", "checkpoint").unwrap(),
    );
    for t in ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"] {
        assert_eq!(a.raw(&format!("stages.0.{t}")).unwrap(), b.raw(&format!("stages.0.{t}")).unwrap(), "{t}");
    }
    assert_ne!(a.raw("head.linear.weight").unwrap(), b.raw("head.linear.weight").unwrap());
    // The same command, the same bytes; a stage stopped after epoch 1 resumes to them.
    let again = train(&f.options(Some(&d1.checkpoint), "d2-again", config())).unwrap();
    assert!(bytes(&again.checkpoint) == bytes(&d2.checkpoint), "same command, same bytes");
    std::env::set_var(STOP_AFTER_EPOCH_ENV, "1");
    let stopped = train(&f.options(Some(&d1.checkpoint), "d2-killed", config()));
    std::env::remove_var(STOP_AFTER_EPOCH_ENV);
    assert!(format!("{:#}", stopped.unwrap_err()).contains("stopped after epoch 1"));
    assert!(f.path("d2-killed").join(STATE_FILE).exists());
    let resumed = train(&f.options(Some(&d1.checkpoint), "d2-killed", config())).unwrap();
    assert!(resumed.resumed);
    assert!(bytes(&resumed.checkpoint) == bytes(&d2.checkpoint), "resumed to the uninterrupted bytes");

    // Depth 3 (psi), then fine-tuning it and a scratch network of 3 stages.
    let d3 = train(&f.options(Some(&d2.checkpoint), "d3", config())).unwrap();
    let (net, _) = load_cnn(&d3.checkpoint).unwrap();
    assert_eq!(net.widths(), [4, 6, 5]);
    let ft = train(&layerwise_train::TrainOptions {
        regime: Regime::Finetune,
        ..f.options(Some(&d3.checkpoint), "ft", config())
    })
    .unwrap();
    assert!(ft.history.best_epoch.is_some() && ft.meta.frozen.is_empty());
    // Without a stage list, fine-tuning takes the checkpoint's architecture (the same bytes);
    // growing is refused: the next stage is not in the file.
    let bare = TrainConfig { cnn: None, ..config() };
    let ft_bare = train(&layerwise_train::TrainOptions {
        regime: Regime::Finetune,
        ..f.options(Some(&d3.checkpoint), "ft-bare", bare.clone())
    })
    .unwrap();
    assert!(bytes(&ft_bare.checkpoint) == bytes(&ft.checkpoint), "the checkpoint's stage list, the same bytes");
    let err = format!("{:#}", train(&f.options(Some(&d2.checkpoint), "grow-bare", bare)).unwrap_err());
    assert!(err.contains("--stages 4,maxpool:6,OUT"), "{err}");
    let scratch = train(&layerwise_train::TrainOptions {
        regime: Regime::Scratch,
        depth: Some(3),
        ..f.options(None, "scratch", config())
    })
    .unwrap();
    assert_eq!(read_checkpoint_meta(&scratch.checkpoint).unwrap().widths, [4, 6, 5]);

    // A parent of another stage list is refused, naming both lists.
    let mut other = config();
    other.cnn.as_mut().unwrap().stages[0] = "7".parse().unwrap();
    let err = format!("{:#}", train(&f.options(Some(&d1.checkpoint), "bad", other)).unwrap_err());
    assert!(err.contains("[4]") && err.contains("[7]"), "{err}");
    // Past the stage list: refused, naming the key.
    let err = format!("{:#}", train(&f.options(Some(&d3.checkpoint), "d4", config())).unwrap_err());
    assert!(err.contains("model.stages"), "{err}");
}
