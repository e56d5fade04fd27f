//! Decoupled greedy learning (Belilovsky, Eickenberg & Oyallon 2020): every stage of a
//! convolutional pipeline trains at once. Each step, stage k takes its predecessor's
//! output for the batch (computed in training mode, detached: no gradient flows back),
//! computes its auxiliary head's loss and updates itself, then hands its own output on.
//!
//! The stages are split into groups of contiguous stages ([`DecoupledConfig::split`]);
//! a group (`group.rs`) is one `Learn` of the one epoch loop, so schedule, shuffles,
//! learning rates, progress, per-epoch state and resume are the sequential loop's. Groups
//! hand [`Frame`]s on through links (`links.rs`): bounded channels between threads of this
//! process, or MPI messages between ranks (`mpi_links.rs`, the `mpi` feature).
//!
//! - **Schedule.** Every stage trains `[train] epochs` epochs over the same shuffled
//!   batches (group 0 shuffles, the others take what arrives), with the learning-rate
//!   schedule of a sequential depth of that many epochs, and its own optimizer, seeds and
//!   fresh weights exactly as sequential growing would make them.
//! - **Synchronous mode**: stage k trains on batch t after stage k−1 did, whatever the
//!   grouping: the same bytes with 1 group or N, threads or ranks.
//! - **Asynchronous mode**: a link's receiver keeps a bounded buffer ([`ReplayBuffer`])
//!   and trains on the freshest least-reused batch, never waiting while it holds one.
//! - **Validation** rides the same links: at the end of its epoch a group streams the
//!   validation split's outputs, in inference mode, to the next.
//! - **State.** After every epoch each stage's state is saved in its depth folder
//!   (`.decoupled-eNNN.bin`, the sequential state format). A rerun resumes every group
//!   from the last epoch all stages saved; once every stage has finished, the checkpoints
//!   are written, depth by depth (each naming its parent's hash), where sequential
//!   training writes them, and the states go.

use crate::conv::{fresh_head, fresh_stage, grown_stage_seed, write, ConvPlan};
use crate::options::{TrainOptions, TrainOutcome};
use crate::progress::Progress;
use crate::state::{self, Expect, ExpectRun, LoopState, RunKey, TrainState, Training};
use anyhow::{bail, Context, Result};
use layerwise_core::cnn::{Cnn, CnnSpec, Downsample};
use layerwise_core::config::{Regime, TrainConfig};
use layerwise_core::dataset::Dataset;
use layerwise_core::decoupled::DecoupledConfig;
use layerwise_core::metrics::EpochMetrics;
use layerwise_core::names::TensorPath;
use layerwise_core::run::depth_dir;
use layerwise_nn::convnet::{self, cnn_tensors, trainable_names, Nhwc, INFER_CHUNK};
use layerwise_nn::Named;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

/// What a decoupled run is asked to do.
#[derive(Debug, Clone)]
pub struct DecoupledOptions {
    /// Prepared dataset.
    pub data: PathBuf,
    /// The run folder: depth `k`'s checkpoint goes to `depth-0k/`.
    pub run_dir: PathBuf,
    /// The settings of every stage (`Pipeline::stage_config` of the greedy phase).
    pub config: TrainConfig,
    /// Groups, mode, buffer, launcher.
    pub decoupled: DecoupledConfig,
    /// Stages trained (`greedy.max_depth`).
    pub depths: usize,
    /// How to show progress.
    pub progress: Progress,
    /// Settings given as flags beside the pipeline, recorded in every checkpoint.
    pub overrides: Vec<String>,
}

/// One stage of the run: its own network (its block, with its downsampling, and its
/// head), the shapes around it.
pub(crate) struct StagePlan {
    /// Its depth (1-based).
    pub(crate) depth: usize,
    /// The stage and its head, as a one-stage network on its predecessor's output.
    pub(crate) net: Cnn,
    /// One example's block input, NHWC without N: `[h, w, c]`.
    pub(crate) input: [usize; 3],
    /// One example's block output, `[h, w, c]`.
    pub(crate) output: [usize; 3],
    /// The next stage's downsampling (none for the last stage).
    pub(crate) next: Option<Downsample>,
}

impl StagePlan {
    /// Its block's output of `rows` examples as the next stage's input (downsampled by it).
    pub(crate) fn hand_on(&self, out: Vec<f32>, rows: usize) -> Vec<f32> {
        match self.next {
            None | Some(Downsample::None) => out,
            Some(d) => {
                let [h, w, c] = self.output;
                convnet::downsample(&out, Nhwc { n: rows, h, w, c }, d).0
            }
        }
    }
}

/// What every group derives alike from the options and the dataset.
pub(crate) struct Shared {
    pub(crate) opts: DecoupledOptions,
    pub(crate) ds: Dataset,
    pub(crate) spec: CnnSpec,
    pub(crate) stages: Vec<StagePlan>,
    /// Training rows, batch size, batches per epoch, validation chunks per epoch.
    pub(crate) rows: usize,
    pub(crate) batch: usize,
    pub(crate) batches: usize,
    pub(crate) val_chunks: usize,
}

impl Shared {
    /// Open the dataset and plan every stage.
    pub(crate) fn new(opts: &DecoupledOptions) -> Result<Shared> {
        let cfg = &opts.config;
        cfg.validate()?;
        let Some(spec) = cfg.cnn.clone() else {
            bail!("the decoupled schedule trains convolutional stages: the pipeline needs [model] kind = \"cnn\"")
        };
        opts.decoupled.validate(opts.depths)?;
        if opts.depths > spec.stages.len() {
            bail!(
                "`greedy.max_depth` is {} but `model.stages` lists {}: list a stage per depth",
                opts.depths,
                layerwise_core::plural(spec.stages.len(), "stage")
            );
        }
        let ds = Dataset::open(&opts.data)?;
        let image = ds.meta.image_shape;
        let shapes =
            spec.conv_inputs(image).context("the pipeline's [model] stages do not fit the dataset's images")?;
        let classes = ds.meta.num_classes();
        let stages = (0..opts.depths)
            .map(|i| {
                let input = if i == 0 { image } else { [spec.stages[i - 1].out, shapes[i - 1][1], shapes[i - 1][2]] };
                let [c, h, w] = shapes[i];
                let out = spec.stages[i].out;
                StagePlan {
                    depth: i + 1,
                    net: Cnn {
                        input,
                        stages: vec![fresh_stage(&spec, &shapes, i, grown_stage_seed(cfg, i))],
                        head: fresh_head(cfg, &spec, classes, out, i + 1),
                    },
                    input: [h, w, c],
                    output: [h, w, out],
                    next: (i + 1 < opts.depths).then(|| spec.stages[i + 1].downsample),
                }
            })
            .collect();
        let rows = ds.meta.split_sizes.train;
        if rows == 0 {
            bail!("{}: the train split is empty", ds.path().display());
        }
        let batch = cfg.batch_size.min(rows).max(1);
        let val = ds.meta.split_sizes.val;
        Ok(Shared {
            opts: opts.clone(),
            ds,
            spec,
            stages,
            rows,
            batch,
            batches: rows.div_ceil(batch),
            val_chunks: val.div_ceil(INFER_CHUNK),
        })
    }

    /// The groups' stages.
    pub(crate) fn groups(&self) -> Vec<Range<usize>> {
        DecoupledConfig::split(self.stages.len(), self.opts.decoupled.groups)
    }

    /// The key of stage `i`'s saved states: its settings, the dataset, the schedule.
    pub(crate) fn key(&self, i: usize) -> RunKey {
        let o = &self.opts;
        RunKey::new(
            &o.config,
            &self.ds.meta.fingerprint,
            Some(&self.opts.decoupled.schedule_name()),
            self.stages[i].depth,
            "cpu",
            Regime::Grow,
        )
    }

    /// Where stage `i` keeps its state after `epoch`.
    pub(crate) fn state_path(&self, i: usize, epoch: usize) -> PathBuf {
        depth_dir(&self.opts.run_dir, self.stages[i].depth).join(format!(".decoupled-e{epoch:03}.bin"))
    }

    /// What stage `i`'s state must hold.
    fn expect(&self, i: usize) -> ExpectRun {
        let net = &self.stages[i].net;
        let sizes: Vec<(String, usize)> =
            cnn_tensors(net, 0).into_iter().map(|(n, v)| (restage(&n, 0, i), v.len())).collect();
        let optimized = trainable_names(1, 0, self.spec.head_convs)
            .into_iter()
            .map(|n| {
                let g = restage(&n, 0, i);
                let len = sizes.iter().find(|(s, _)| *s == g).map_or(0, |(_, l)| *l);
                (g, len)
            })
            .collect();
        ExpectRun {
            main: Expect {
                epochs: self.opts.config.epochs,
                batches: self.batches,
                tensors: sizes,
                optimized,
                second: self.opts.config.optimizer_spec().buffers() == 2,
            },
            pretrain: None,
        }
    }

    /// Stage `i`'s state after `epoch`, verified and validated; None where there is none
    /// or it does not hold (damaged, another run's).
    pub(crate) fn load_state(&self, i: usize, epoch: usize) -> Option<LoopState<EpochMetrics>> {
        let path = self.state_path(i, epoch);
        let expect = self.expect(i);
        match state::load(&path, &self.key(i), expect.max_bytes()) {
            Ok(Some(TrainState { training: Training::Supervised(l), .. }))
                if l.epoch == epoch && state::validate_loop(&l, &expect.main, true).is_ok() =>
            {
                Some(l)
            }
            _ => None,
        }
    }

    /// The last epoch after which every stage of `stages` saved a state that holds, and
    /// none older is missing (0: none).
    pub(crate) fn latest_saved(&self, stages: Range<usize>) -> usize {
        let mut e = self.opts.config.epochs;
        while e > 0 && !stages.clone().all(|i| self.load_state(i, e).is_some()) {
            e -= 1;
        }
        e
    }

    /// Whether every stage of `stages` has a state after `epoch` that holds (an MPI
    /// rank's check of the epoch all ranks agreed on).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn all_saved(&self, stages: Range<usize>, epoch: usize) -> bool {
        epoch == 0 || stages.clone().all(|i| self.load_state(i, epoch).is_some())
    }
}

/// A tensor name with stage `from`'s prefix made stage `to`'s (`stages.0.conv.weight` →
/// `stages.2.conv.weight`); other names (the head's) stay. A stage's one-stage network
/// names its block stage 0; its saved state and checkpoint, by its depth.
pub(crate) fn restage(name: &str, from: usize, to: usize) -> String {
    let prefix = format!("{}.", String::from(TensorPath::stage(from)));
    match name.strip_prefix(&prefix) {
        Some(rest) => format!("{}.{rest}", String::from(TensorPath::stage(to))),
        None => name.to_string(),
    }
}

/// The file every run writes beside its depths: how its groups ran.
pub const DECOUPLED_FILE: &str = "decoupled.json";

/// Once every stage has finished: write each depth's checkpoint from the stages' final
/// states (depth by depth, each naming its parent's hash), the run's `decoupled.json`,
/// and remove the states.
pub(crate) fn write_checkpoints(
    shared: &Shared,
    reports: &[serde_json::Value],
    started: Instant,
    resumed: bool,
) -> Result<Vec<TrainOutcome>> {
    let e = shared.opts.config.epochs;
    let finals: Vec<LoopState<EpochMetrics>> = (0..shared.stages.len())
        .map(|i| {
            shared.load_state(i, e).with_context(|| {
                format!(
                    "depth {}: no state after its last epoch ({}) to write its checkpoint from; rerun to train again",
                    i + 1,
                    shared.state_path(i, e).display()
                )
            })
        })
        .collect::<Result<_>>()?;
    let mut prefix: Vec<layerwise_core::cnn::ConvStage> = Vec::new();
    let mut parent_sha = None;
    let mut outcomes = Vec::new();
    let image = shared.ds.meta.image_shape;
    for (i, st) in finals.into_iter().enumerate() {
        let plan = &shared.stages[i];
        let mine: Named = st.tensors.iter().map(|(n, v)| (restage(n, i, 0), v.clone())).collect();
        let one = convnet::cnn_with_tensors(&plan.net, 0, &mine)?;
        prefix.push(one.stages[0].clone());
        let net = Cnn { input: image, stages: prefix.clone(), head: one.head };
        let opts = TrainOptions {
            data: shared.opts.data.clone(),
            from: None,
            out: depth_dir(&shared.opts.run_dir, plan.depth),
            config: shared.opts.config.clone(),
            device: layerwise_nn::device::DeviceKind::Cpu,
            progress: shared.opts.progress,
            regime: Regime::Grow,
            depth: None,
            overrides: shared.opts.overrides.clone(),
        };
        let p = ConvPlan { depth: plan.depth, net: net.clone(), first: i, parent_sha: parent_sha.clone() };
        let out = write(
            &opts,
            &shared.ds,
            &p,
            net,
            st.epochs,
            None,
            (0, 0.0, resumed),
            started,
            Some(shared.opts.decoupled.schedule_name()),
        )?;
        parent_sha = Some(layerwise_core::hash::sha256_file(&out.checkpoint)?);
        outcomes.push(out);
    }
    let summary = serde_json::json!({
        "schema": "layerwise-decoupled",
        "version": 1,
        "schedule": shared.opts.decoupled.schedule_name(),
        "groups": reports.len(),
        "launcher": shared.opts.decoupled.launcher.name(),
        "seconds": started.elapsed().as_secs_f64(),
        "resumed": resumed,
        "group_reports": reports,
    });
    layerwise_core::atomic::write_json_atomic(&shared.opts.run_dir.join(DECOUPLED_FILE), &summary)?;
    for i in 0..shared.stages.len() {
        for epoch in 1..=e {
            let _ = std::fs::remove_file(shared.state_path(i, epoch));
        }
    }
    Ok(outcomes)
}

/// Say where a run starts: from the beginning, or after the last epoch every stage saved.
pub(crate) fn say(shared: &Shared, epoch: usize) {
    if shared.opts.progress == Progress::Quiet || epoch == 0 {
        return;
    }
    let e = shared.opts.config.epochs;
    let text = if epoch == e {
        "every stage finished: writing the checkpoints".to_string()
    } else {
        format!("resuming every stage after epoch {epoch} of {e}, the last one all stages saved")
    };
    layerwise_core::progress::println(&format!("decoupled: {text}"));
}
