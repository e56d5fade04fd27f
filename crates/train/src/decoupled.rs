//! Decoupled greedy learning (Belilovsky, Eickenberg & Oyallon 2020): every stage of a
//! convolutional pipeline trains at once. Each step, stage k takes its predecessor's
//! output for the batch (computed in training mode, detached: no gradient flows back),
//! computes its auxiliary head's loss and updates itself, then hands its own output on.
//!
//! The stages are split into groups of contiguous stages ([`DecoupledConfig::split`]);
//! a group is one [`Learn`] of the one epoch loop ([`Learner`]), so schedule, shuffles,
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
use crate::learner::{BatchSeeds, Learn, Learner, Loop, NotFinite};
use crate::links::{Inbox, LinkStats, Outbox, Upstream};
use crate::options::{TrainOptions, TrainOutcome};
use crate::progress::Progress;
use crate::progress::Reporter;
use crate::state::{self, Expect, ExpectRun, LoopState, Record, RunKey, TrainState, Training};
use crate::supervised::epoch_metrics;
use anyhow::{bail, Context, Result};
use layerwise_core::cnn::{Cnn, CnnSpec, Downsample};
use layerwise_core::config::{Augment, Regime, TrainConfig};
use layerwise_core::dataset::{Dataset, Split};
use layerwise_core::decoupled::DecoupledConfig;
use layerwise_core::link::{Frame, FrameKind};
use layerwise_core::metrics::EpochMetrics;
use layerwise_core::names::TensorPath;
use layerwise_core::run::depth_dir;
use layerwise_nn::convnet::{self, cnn_tensors, trainable_names, ConvNet, ConvSettings, Nhwc, INFER_CHUNK};
use layerwise_nn::{Backend, EvalSums, Moments, Named, Step};
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

    /// How checkpoints name the schedule (`decoupled sync`), also in the states' key.
    fn schedule_name(&self) -> String {
        self.opts.decoupled.schedule_name()
    }

    /// The key of stage `i`'s saved states: its settings, the dataset, the schedule.
    fn key(&self, i: usize) -> RunKey {
        let o = &self.opts;
        RunKey::new(
            &o.config,
            &self.ds.meta.fingerprint,
            Some(&self.schedule_name()),
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
            cnn_tensors(net, 0).into_iter().map(|(n, v)| (global(&n, i), v.len())).collect();
        let optimized = trainable_names(1, 0, self.spec.head_convs)
            .into_iter()
            .map(|n| {
                let g = global(&n, i);
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
    fn load_state(&self, i: usize, epoch: usize) -> Option<LoopState<EpochMetrics>> {
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

/// Stage `i`'s name for a tensor its one-stage network calls `name` (`stages.0.conv.weight`
/// → `stages.{i}.conv.weight`; the head's names are the head's).
fn global(name: &str, i: usize) -> String {
    let local = format!("{}.", String::from(TensorPath::stage(0)));
    match name.strip_prefix(&local) {
        Some(rest) => format!("{}.{rest}", String::from(TensorPath::stage(i))),
        None => name.to_string(),
    }
}

/// The inverse of [`global`].
fn local(name: &str, i: usize) -> String {
    let global = format!("{}.", String::from(TensorPath::stage(i)));
    match name.strip_prefix(&global) {
        Some(rest) => format!("{}.{rest}", String::from(TensorPath::stage(0))),
        None => name.to_string(),
    }
}

/// A group's epoch: one line per stage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupEpoch {
    epoch: usize,
    stages: Vec<EpochMetrics>,
}

impl Record for GroupEpoch {
    fn epoch(&self) -> usize {
        self.epoch
    }

    fn in_range(&self) -> bool {
        self.stages.iter().all(Record::in_range)
    }

    fn val_accuracy(&self) -> Option<f64> {
        None
    }
}

/// A group's name for stage `i`'s tensor `name` inside its one loop state.
fn tagged(i: usize, name: &str) -> String {
    format!("{i}:{name}")
}

fn untag(tagged: &str) -> Option<(usize, &str)> {
    let (i, name) = tagged.split_once(':')?;
    Some((i.parse().ok()?, name))
}

/// One stage being trained in a group.
struct StageRun {
    index: usize,
    /// Seconds in its training steps and its validation passes (its own compute).
    seconds: f64,
    step: Box<dyn Step<'static>>,
    input: [usize; 3],
    output: [usize; 3],
    next: Option<Downsample>,
}

impl StageRun {
    /// Its output of `rows` examples as the next stage's input (downsampled by it).
    fn hand_on(&self, out: Vec<f32>, rows: usize) -> Vec<f32> {
        match self.next {
            None | Some(Downsample::None) => out,
            Some(d) => {
                let [h, w, c] = self.output;
                convnet::downsample(&out, Nhwc { n: rows, h, w, c }, d).0
            }
        }
    }
}

/// Where a group's batches come from.
enum Source<'d> {
    /// Group 0: the dataset. The first stage's input, computed once (no augmentation),
    /// or the images (augmented per batch).
    Data { cached: Option<Vec<f32>>, images: &'d [f32], labels: &'d [u8], val: Vec<f32>, val_labels: &'d [u8] },
    /// Any other group: the link from the group before.
    Link(Upstream<'d>),
}

/// One group of stages: one [`Learn`] of the one epoch loop.
pub(crate) struct Group<'d> {
    shared: &'d Shared,
    stages: Vec<StageRun>,
    source: Source<'d>,
    outbox: Option<Box<dyn Outbox + 'd>>,
    /// Training batches stepped so far (the next one's index), validation chunks so far.
    t: u64,
    val_t: u64,
    xb: Vec<f32>,
    yb: Vec<u8>,
    /// Per-stage history so far.
    history: Vec<Vec<EpochMetrics>>,
    /// What crossed this group's links.
    pub(crate) sent: LinkStats,
}

impl<'d> Group<'d> {
    /// The group of `stages`, from `saved` (their states after `epoch`, none at 0),
    /// batches from `inbox` (none for group 0) and to `outbox` (none for the last group).
    pub(crate) fn new<D: Backend + 'static>(
        dev: &D,
        shared: &'d Shared,
        stages: Range<usize>,
        epoch: usize,
        inbox: Option<Box<dyn Inbox + 'd>>,
        outbox: Option<Box<dyn Outbox + 'd>>,
        train: &'d layerwise_core::dataset::SplitView<'d>,
        val: &'d layerwise_core::dataset::SplitView<'d>,
    ) -> Result<(Group<'d>, Option<LoopState<GroupEpoch>>)> {
        let cfg = &shared.opts.config;
        let settings = ConvSettings {
            optimizer: cfg.optimizer_spec(),
            weight_decay: cfg.weight_decay,
            label_smoothing: cfg.label_smoothing,
        };
        let mut runs = Vec::new();
        let mut history = Vec::new();
        let mut saved_group: Option<LoopState<GroupEpoch>> = None;
        for i in stages.clone() {
            let plan = &shared.stages[i];
            let saved = if epoch > 0 {
                Some(shared.load_state(i, epoch).with_context(|| {
                    format!("depth {}: its state after epoch {epoch} no longer holds; rerun to start over", plan.depth)
                })?)
            } else {
                None
            };
            let (net, restored) = match &saved {
                Some(st) => {
                    let mine: Named = st.tensors.iter().map(|(n, v)| (local(n, i), v.clone())).collect();
                    let moments: Moments =
                        st.optimizer.iter().map(|(n, a, b)| (local(n, i), a.clone(), b.clone())).collect();
                    (convnet::cnn_with_tensors(&plan.net, 0, &mine)?, Some((st.optimizer_t, moments)))
                }
                None => (plan.net.clone(), None),
            };
            let step = convnet::conv_step(dev, D::KERNELS, ConvNet::from_cnn(&net), 0, &settings, restored);
            if let Some(st) = saved {
                let g = saved_group.get_or_insert_with(|| LoopState {
                    epoch,
                    tensors: Vec::new(),
                    optimizer_t: st.optimizer_t,
                    optimizer: Vec::new(),
                    epochs: Vec::new(),
                    best: None,
                });
                g.tensors.extend(st.tensors.iter().map(|(n, v)| (tagged(i, n), v.clone())));
                g.optimizer.extend(st.optimizer.iter().map(|(n, a, b)| (tagged(i, n), a.clone(), b.clone())));
                history.push(st.epochs);
            } else {
                history.push(Vec::new());
            }
            runs.push(StageRun {
                index: i,
                seconds: 0.0,
                step,
                input: plan.input,
                output: plan.output,
                next: plan.next,
            });
        }
        if let Some(g) = &mut saved_group {
            g.epochs = (0..epoch)
                .map(|e| GroupEpoch { epoch: e + 1, stages: history.iter().map(|h| h[e].clone()).collect() })
                .collect();
        }
        let source = match inbox {
            None => {
                let first = &runs[0];
                let augment = cfg.augment == Augment::FlipCrop;
                let cached = (!augment).then(|| first.step.prefix(&train.images, train.len()));
                let val_x = first.step.prefix(&val.images, val.len());
                Source::Data { cached, images: &train.images, labels: train.labels, val: val_x, val_labels: val.labels }
            }
            Some(inbox) => {
                let input = shared.stages[stages.start].input;
                let d = &shared.opts.decoupled;
                Source::Link(Upstream::new(
                    inbox,
                    stages.start as u32,
                    input,
                    shared.batch,
                    d.mode,
                    d.buffer,
                    d.reuse,
                    shared.val_chunks,
                ))
            }
        };
        let group = Group {
            shared,
            stages: runs,
            source,
            outbox,
            t: (epoch * shared.batches) as u64,
            val_t: (epoch * shared.val_chunks) as u64,
            xb: Vec::new(),
            yb: Vec::new(),
            history,
            sent: LinkStats::default(),
        };
        Ok((group, saved_group))
    }

    /// Hand a frame to the next group, if there is one.
    fn send(&mut self, kind: FrameKind, batch: u64, values: Vec<f32>, labels: Vec<u8>) -> Result<()> {
        let Some(out) = &mut self.outbox else { return Ok(()) };
        let last = &self.stages[self.stages.len() - 1];
        let shape = match kind {
            FrameKind::End => vec![1],
            _ => self.shared.stages[last.index + 1].input.iter().map(|&d| d as u32).collect(),
        };
        let frame = Frame { kind, link: last.index as u32 + 1, batch, shape, values, labels };
        let bytes = frame.encode()?;
        self.sent.frames += 1;
        self.sent.bytes += bytes.len() as u64;
        let t = Instant::now();
        out.send(bytes)?;
        self.sent.blocked_seconds += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Tell the next group this one has finished, and read the incoming link to its end.
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.send(FrameKind::End, self.t, Vec::new(), Vec::new())?;
        match &mut self.source {
            Source::Link(up) => up.finish(),
            Source::Data { .. } => Ok(()),
        }
    }

    /// The link statistics of this group's inbox (none for group 0).
    pub(crate) fn received(&self) -> Option<LinkStats> {
        match &self.source {
            Source::Link(u) => Some(u.stats()),
            Source::Data { .. } => None,
        }
    }
}

impl Learn for Group<'_> {
    type Record = GroupEpoch;

    fn step(&mut self, rows: &[usize], seeds: &BatchSeeds, lr: f64) -> Result<Option<f32>> {
        let (mut x, labels) = match &mut self.source {
            Source::Data { cached, images, labels, .. } => {
                self.yb.clear();
                self.yb.extend(rows.iter().map(|&i| labels[i]));
                match cached {
                    Some(c) => {
                        let per: usize = self.stages[0].input.iter().product();
                        self.xb.clear();
                        for &i in rows {
                            self.xb.extend_from_slice(&c[i * per..(i + 1) * per]);
                        }
                        (std::mem::take(&mut self.xb), self.yb.clone())
                    }
                    None => {
                        let dim = self.shared.ds.meta.input_size();
                        let mut raw = Vec::with_capacity(rows.len() * dim);
                        for &i in rows {
                            raw.extend_from_slice(&images[i * dim..(i + 1) * dim]);
                        }
                        layerwise_nn::flip_crop(&mut raw, self.shared.ds.meta.image_shape, 4, seeds.augment());
                        (self.stages[0].step.prefix(&raw, rows.len()), self.yb.clone())
                    }
                }
            }
            Source::Link(up) => {
                let f = up.next_batch(self.t)?;
                (f.values, f.labels)
            }
        };
        let n = labels.len();
        let mut worst = None;
        for k in 0..self.stages.len() {
            let started = Instant::now();
            let (loss, out) = self.stages[k].step.step_handing_on(&x, &labels, seeds.dropout(), lr)?;
            self.stages[k].seconds += started.elapsed().as_secs_f64();
            if let Some(l) = loss.filter(|l| !l.is_finite()) {
                worst = Some(l);
            }
            x = self.stages[k].hand_on(out, n);
        }
        let t = self.t;
        self.t += 1;
        if self.outbox.is_some() {
            self.send(FrameKind::Train, t, x, labels)?;
        } else {
            self.xb = x;
        }
        Ok(worst.or(Some(0.0)))
    }

    fn running(&self, _seen: usize) -> String {
        let parts: Vec<String> = self
            .stages
            .iter()
            .filter_map(|s| s.step.running().map(|(l, a)| format!("d{} {l:.3}/{a:.3}", s.index + 1)))
            .collect();
        parts.join(" ")
    }

    fn end_epoch(&mut self, epoch: usize, started: Instant) -> Result<GroupEpoch> {
        let train: Vec<EvalSums> = self.stages.iter_mut().map(|s| s.step.take_sums()).collect();
        if let Some(s) = train.iter().find(|s| !s.loss().is_finite()) {
            return Err(NotFinite(s.loss()).into());
        }
        // The validation split, chunk by chunk, through every stage, then on.
        let classes = self.shared.ds.meta.num_classes();
        let mut val: Vec<EvalSums> = self.stages.iter().map(|_| EvalSums::new(classes)).collect();
        let chunks: Vec<(Vec<f32>, Vec<u8>)> = match &mut self.source {
            Source::Data { val, val_labels, .. } => {
                let per: usize = self.stages[0].input.iter().product();
                val_labels
                    .chunks(INFER_CHUNK)
                    .enumerate()
                    .map(|(c, l)| (val[c * INFER_CHUNK * per..(c * INFER_CHUNK + l.len()) * per].to_vec(), l.to_vec()))
                    .collect()
            }
            Source::Link(up) => up.val_set(self.val_t, self.shared.val_chunks)?,
        };
        for (mut x, labels) in chunks {
            let n = labels.len();
            for (k, s) in self.stages.iter_mut().enumerate() {
                let started = Instant::now();
                let out = s.step.infer_handing_on(&x, &labels, &mut val[k])?;
                s.seconds += started.elapsed().as_secs_f64();
                x = s.hand_on(out, n);
            }
            let c = self.val_t;
            self.val_t += 1;
            self.send(FrameKind::Val, c, x, labels)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let stages: Vec<EpochMetrics> =
            train.iter().zip(&val).map(|(t, v)| epoch_metrics(epoch, t, v, seconds, self.shared.rows)).collect();
        for (h, m) in self.history.iter_mut().zip(&stages) {
            h.push(m.clone());
        }
        Ok(GroupEpoch { epoch, stages })
    }

    fn show(&self, bar: &mut Reporter, record: &GroupEpoch) {
        for (s, m) in self.stages.iter().zip(&record.stages) {
            bar.stage_epoch(s.index + 1, m);
        }
    }

    fn tensors(&self) -> Named {
        let mut out = Named::new();
        for s in &self.stages {
            out.extend(s.step.tensors().into_iter().map(|(n, v)| (tagged(s.index, &global(&n, s.index)), v)));
        }
        out
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        let mut t = 0;
        let mut out = Moments::new();
        for s in &self.stages {
            let (st, m) = s.step.optimizer_state();
            t = st;
            out.extend(m.into_iter().map(|(n, a, b)| (tagged(s.index, &global(&n, s.index)), a, b)));
        }
        (t, out)
    }
}

/// Train group `g` (its `stages`) from the states after `epoch`, to the end; its
/// statistics for the report.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_group(
    shared: &Shared,
    g: usize,
    stages: Range<usize>,
    epoch: usize,
    inbox: Option<Box<dyn Inbox + '_>>,
    outbox: Option<Box<dyn Outbox + '_>>,
    progress: Progress,
) -> Result<GroupReport> {
    let started = Instant::now();
    let train = shared.ds.split(Split::Train)?;
    let val = shared.ds.split(Split::Val)?;
    let dev = layerwise_nn::device::cpu(shared.opts.config.seed);
    let (mut group, saved) = Group::new(&dev, shared, stages.clone(), epoch, inbox, outbox, &train, &val)?;
    let first_depth = stages.start + 1;
    let state_path = shared.state_path(stages.start, epoch.max(1));
    let learner = Learner {
        config: &shared.opts.config,
        depth: first_depth,
        kind: Loop::Decoupled,
        epochs: shared.opts.config.epochs,
        rows: shared.rows,
        progress,
        state_path: &state_path,
    };
    let steps_before = group.t;
    let indices: Vec<usize> = group.stages.iter().map(|s| s.index).collect();
    let result = learner.run(&mut group, saved, |st| save_group(shared, &indices, st));
    let result = result.and_then(|_| group.finish());
    let seconds = started.elapsed().as_secs_f64();
    let steps = group.t - steps_before;
    let report = GroupReport {
        group: g,
        depths: (stages.start + 1, stages.end),
        steps,
        seconds,
        steps_per_second: steps as f64 / seconds.max(1e-9),
        sent: group.sent,
        received: group.received(),
        peak_memory_bytes: peak_memory(),
        stage_seconds: group.stages.iter().map(|s| (s.index + 1, s.seconds)).collect(),
    };
    result.map(|()| report)
}

/// Split a group's loop state into its stages' and save each after `st.epoch`.
fn save_group(shared: &Shared, stages: &[usize], st: LoopState<GroupEpoch>) -> Result<()> {
    for (k, &i) in stages.iter().enumerate() {
        let mine = |n: &str| untag(n).filter(|(j, _)| *j == i).map(|(_, name)| name.to_string());
        let stage = LoopState {
            epoch: st.epoch,
            tensors: st.tensors.iter().filter_map(|(n, v)| Some((mine(n)?, v.clone()))).collect(),
            optimizer_t: st.optimizer_t,
            optimizer: st.optimizer.iter().filter_map(|(n, a, b)| Some((mine(n)?, a.clone(), b.clone()))).collect(),
            epochs: st.epochs.iter().map(|e| e.stages[k].clone()).collect(),
            best: None,
        };
        let path = shared.state_path(i, st.epoch);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        state::save(&path, &TrainState::new(&shared.key(i), Training::Supervised(stage)))?;
    }
    Ok(())
}

/// What one group did, for `decoupled.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct GroupReport {
    pub(crate) group: usize,
    /// Its first and last depth.
    pub(crate) depths: (usize, usize),
    pub(crate) steps: u64,
    pub(crate) seconds: f64,
    pub(crate) steps_per_second: f64,
    /// What it sent on its outgoing link.
    pub(crate) sent: LinkStats,
    /// What arrived on its incoming link (none for group 0).
    pub(crate) received: Option<LinkStats>,
    /// The process's peak resident memory (an MPI rank's own; the threads' process's).
    pub(crate) peak_memory_bytes: Option<u64>,
    /// Each of its depths and the seconds of its own compute (steps and validation).
    pub(crate) stage_seconds: Vec<(usize, f64)>,
}

/// The process's peak resident set (`VmHWM`), where the system says.
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
        let mine: Named = st.tensors.iter().map(|(n, v)| (local(n, i), v.clone())).collect();
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
            Some(shared.schedule_name()),
        )?;
        parent_sha = Some(layerwise_core::hash::sha256_file(&out.checkpoint)?);
        outcomes.push(out);
    }
    let summary = serde_json::json!({
        "schema": "layerwise-decoupled",
        "version": 1,
        "schedule": shared.schedule_name(),
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
