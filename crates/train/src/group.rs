//! One group of a decoupled run's stages (`decoupled.rs`): one [`Learn`] of the one
//! epoch loop. Each step takes a batch (from the dataset for group 0, else from the link
//! before it), runs it through each of its stages with [`Step::step_handing_on`] and hands
//! the last output on; each epoch ends with the validation split streamed the same way
//! through [`Step::infer_handing_on`]. After every epoch the group's loop state is split
//! into its stages' states and saved.

use crate::decoupled::{restage, Shared, StagePlan};
use crate::learner::{BatchSeeds, Learn, Learner, Loop, NotFinite};
use crate::links::{Inbox, LinkStats, Outbox, Upstream};
use crate::progress::{Progress, Reporter};
use crate::state::{self, LoopState, Record, TrainState, Training};
use crate::supervised::epoch_metrics;
use anyhow::{Context, Result};
use layerwise_core::config::Augment;
use layerwise_core::dataset::{Split, SplitView};
use layerwise_core::link::{Frame, FrameKind};
use layerwise_core::metrics::EpochMetrics;
use layerwise_nn::convnet::{self, ConvNet, ConvSettings, INFER_CHUNK};
use layerwise_nn::{Backend, EvalSums, Moments, Named, Step};
use std::ops::Range;
use std::time::Instant;

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
struct StageRun<'d> {
    plan: &'d StagePlan,
    /// Its index among the run's stages (its depth − 1).
    index: usize,
    /// Seconds in its training steps and its validation passes (its own compute).
    seconds: f64,
    step: Box<dyn Step<'static>>,
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
    stages: Vec<StageRun<'d>>,
    source: Source<'d>,
    outbox: Option<Box<dyn Outbox + 'd>>,
    /// Training batches stepped so far (the next one's index), validation chunks so far.
    t: u64,
    val_t: u64,
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
        train: &'d SplitView<'d>,
        val: &'d SplitView<'d>,
    ) -> Result<(Group<'d>, Option<LoopState<GroupEpoch>>)> {
        let cfg = &shared.opts.config;
        let settings = ConvSettings::of(cfg);
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
                    let mine: Named = st.tensors.iter().map(|(n, v)| (restage(n, i, 0), v.clone())).collect();
                    let moments: Moments =
                        st.optimizer.iter().map(|(n, a, b)| (restage(n, i, 0), a.clone(), b.clone())).collect();
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
            }
            runs.push(StageRun { plan, index: i, seconds: 0.0, step });
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

/// Rows `rows` of `x` (rows of `per` values each), in that order.
fn gather(x: &[f32], rows: &[usize], per: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * per);
    for &i in rows {
        out.extend_from_slice(&x[i * per..(i + 1) * per]);
    }
    out
}

impl Learn for Group<'_> {
    type Record = GroupEpoch;

    fn step(&mut self, rows: &[usize], seeds: &BatchSeeds, lr: f64) -> Result<Option<f32>> {
        let (mut x, labels) = match &mut self.source {
            Source::Data { cached, images, labels, .. } => {
                let labels: Vec<u8> = rows.iter().map(|&i| labels[i]).collect();
                let x = match cached {
                    Some(c) => gather(c, rows, self.stages[0].plan.input.iter().product()),
                    None => {
                        let mut raw = gather(images, rows, self.shared.ds.meta.input_size());
                        layerwise_nn::flip_crop(&mut raw, self.shared.ds.meta.image_shape, 4, seeds.augment());
                        self.stages[0].step.prefix(&raw, rows.len())
                    }
                };
                (x, labels)
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
            x = self.stages[k].plan.hand_on(out, n);
        }
        let t = self.t;
        self.t += 1;
        self.send(FrameKind::Train, t, x, labels)?;
        // The learner checks a loss only for being finite; a finite one is not needed.
        Ok(worst)
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
                let per: usize = self.stages[0].plan.input.iter().product();
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
                x = s.plan.hand_on(out, n);
            }
            let c = self.val_t;
            self.val_t += 1;
            self.send(FrameKind::Val, c, x, labels)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let stages =
            train.iter().zip(&val).map(|(t, v)| epoch_metrics(epoch, t, v, seconds, self.shared.rows)).collect();
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
            out.extend(s.step.tensors().into_iter().map(|(n, v)| (tagged(s.index, &restage(&n, 0, s.index)), v)));
        }
        out
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        let mut t = 0;
        let mut out = Moments::new();
        for s in &self.stages {
            let (st, m) = s.step.optimizer_state();
            t = st;
            out.extend(m.into_iter().map(|(n, a, b)| (tagged(s.index, &restage(&n, 0, s.index)), a, b)));
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
