//! `cargo xtask verify-device`: the device path (dfdx ops and autograd: what a GPU runs)
//! against the host kernels on the same inputs, on `pipelines/cnn.toml`'s network and on
//! the tutorial's MLP, as relative errors ‖device − host‖₂ / ‖host‖₂ per tensor (the worst
//! tensor of each check is named; [`rel_errors`] says why the norm), beside the host's own
//! error on the batch in reverse order (the fp32 floor).
//!
//! Convolutional checks (host: `ConvTrainer`, device: `DeviceConvTrainer`):
//! - the logits of the whole five-stage network (inference mode);
//! - for each stage k, the gradients of a grown stage k (stages before it frozen, their
//!   output computed on the host), which covers every stage shape of the network;
//! - fine-tuning the whole network (stage 0 on, every gradient through every stage);
//! - a psi network (cnn-smoke's downsampling), fine-tuned.
//!
//! MLP checks: the logits against the host kernels, and the gradients of a grown depth 2
//! (its input a frozen layer's output) against dfdx's CPU (whose gradients are tested
//! against autograd and the host trainer in `crates/nn/tests`).
//!
//! On `--device cpu` the device path runs on dfdx's CPU: the same check without a GPU.
//! The checks run with whatever TF32 setting the process has: `scripts/gpu-check.sh` runs
//! them with `NVIDIA_TF32_OVERRIDE=0` and at the default, and the JSON records which.

use crate::bench_conv::{cnn_stages, fill};
use anyhow::{bail, Context, Result};
use layerwise_core::checkpoint::Dense;
use layerwise_core::cnn::{Cnn, CnnHead, ConvStage, Downsample, StageSpec};
use layerwise_core::names::TensorPath;
use layerwise_nn::convnet::{
    new_block, new_linear, trainable_names, ConvNet, ConvSettings, ConvTrainer, DeviceConvNet, DeviceConvTrainer,
    OptimizerSpec,
};
use layerwise_nn::device::DeviceKind;
use layerwise_nn::{batch_gradients, glorot_dense, Backend, Layer, Matrix};
use std::path::PathBuf;

/// `cargo xtask verify-device` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The device whose path is checked: cuda, or cpu (the same dfdx path on dfdx's CPU).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceKind,
    /// Images per convolutional check.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Largest ‖device − host‖₂ / ‖host‖₂ that passes (fp32 arithmetic in another order:
    /// about 1e-6; TF32 products: about 1e-3).
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Also write the checks as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One check: what was compared, its worst tensor and that tensor's relative error.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was compared (`cnn grow stage 3: gradients`).
    pub what: String,
    /// The tensor with the largest relative error.
    pub worst: String,
    /// Its relative error, ‖device − host‖₂ / ‖host‖₂ (see [`rel_errors`]).
    pub rel: f64,
    /// The largest of any tensor's largest-value errors (reported, not judged).
    pub max: f64,
    /// The fp32 floor: the largest relative error between the host kernels and themselves
    /// on the batch in reverse order (the same sums, in another order); 0 where not measured.
    pub floor: f64,
    /// The device against itself on the batch in reverse order.
    pub device_floor: f64,
}

/// How far above the floors a device may be: it sums in another order too.
pub const FLOOR_FACTOR: f64 = 4.0;

impl Check {
    /// Within the tolerance, or within [`FLOOR_FACTOR`] of what reordering the batch does
    /// to the host's or the device's own result (the device is then right up to its own
    /// rounding; a wrong kernel, a doubled gradient say, is off by far more).
    pub fn ok(&self, tolerance: f64) -> bool {
        self.rel <= tolerance || self.rel <= FLOOR_FACTOR * self.floor.max(self.device_floor)
    }
}

/// Two relative errors of `a` against the reference `b`: ‖a − b‖₂ / ‖b‖₂ (what a check
/// passes on), and the largest |a − b| over the largest |b| (what a single value can be off
/// by). Both infinite when the lengths differ or a value is not finite.
///
/// Why the norm: fp32 sums in another order move a pre-activation by ~1e-7, and the few of
/// a stage's millions that lie that close to zero then flip their ReLU (or a max-pooling
/// tie its winner), each moving one row's share of a weight gradient: a single value can
/// be off by 1e-2 while the tensor is right to 1e-6. A wrong kernel moves the norm: a
/// doubled gradient is off by 1.
pub fn rel_errors(a: &[f32], b: &[f32]) -> (f64, f64) {
    if a.len() != b.len() {
        return (f64::INFINITY, f64::INFINITY);
    }
    let (mut diff2, mut ref2, mut worst, mut scale) = (0f64, 0f64, 0f64, 1e-30f64);
    for (x, y) in a.iter().zip(b) {
        let d = (*x as f64 - *y as f64).abs();
        if !d.is_finite() {
            return (f64::INFINITY, f64::INFINITY);
        }
        diff2 += d * d;
        ref2 += (*y as f64) * (*y as f64);
        worst = worst.max(d);
        scale = scale.max((*y as f64).abs());
    }
    ((diff2 / ref2.max(1e-60)).sqrt(), worst / scale)
}

/// The worst of named (device, host) pairs, by the norm.
fn worst_of(what: String, pairs: impl IntoIterator<Item = (String, Vec<f32>, Vec<f32>)>) -> Check {
    let mut check = Check { what, worst: String::new(), rel: -1.0, max: 0.0, floor: 0.0, device_floor: 0.0 };
    let all = std::env::var_os("LAYERWISE_VERIFY_ALL").is_some();
    for (name, d, h) in pairs {
        let (rel, max) = rel_errors(&d, &h);
        if all {
            eprintln!("{}: {name}: norm {rel:.2e}, largest {max:.2e} ({} values)", check.what, d.len());
        }
        check.max = check.max.max(max);
        if rel > check.rel || rel.is_nan() {
            check.rel = rel;
            check.worst = name;
        }
    }
    check
}

/// Run every check on `a.device`, print the table, write the JSON; an error when a check
/// exceeds the tolerance.
pub fn run(a: &VerifyArgs) -> Result<()> {
    let stages = cnn_stages()?;
    let checks =
        layerwise_nn::with_device!(a.device, 0, |dev| Ok::<_, anyhow::Error>(all_checks(&dev, &stages, a.batch)))?;
    let tf32 = std::env::var("NVIDIA_TF32_OVERRIDE").unwrap_or_else(|_| "unset".into());
    println!(
        "verify-device: the {} path against the host kernels (NVIDIA_TF32_OVERRIDE={tf32}, tolerance {:e})",
        a.device.name(),
        a.tolerance
    );
    println!(
        "| check | worst tensor | ‖Δ‖/‖host‖ | host vs host, batch reversed (fp32 floor) | device vs device, batch \
         reversed | largest |Δ|/max |host| | |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | --- |");
    for c in &checks {
        let ok = if c.ok(a.tolerance) { "ok" } else { "FAIL" };
        let show = |v: f64| if v > 0.0 { format!("{v:.2e}") } else { "—".into() };
        let (floor, device_floor) = (show(c.floor), show(c.device_floor));
        println!("| {} | {} | {:.2e} | {floor} | {device_floor} | {:.2e} | {ok} |", c.what, c.worst, c.rel, c.max);
    }
    if let Some(path) = &a.json {
        let rows: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "device": a.device.name(), "tf32": tf32, "check": c.what, "worst": c.worst,
                    "rel_error": if c.rel.is_finite() { serde_json::json!(c.rel) } else { serde_json::json!("inf") },
                    "max_error": if c.max.is_finite() { serde_json::json!(c.max) } else { serde_json::json!("inf") },
                    "floor": c.floor, "device_floor": c.device_floor, "ok": c.ok(a.tolerance),
                })
            })
            .collect();
        layerwise_core::atomic::write_json_atomic(path, &rows)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok(a.tolerance)).map(|c| c.what.as_str()).collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} checks exceed the tolerance {:e} and {FLOOR_FACTOR} × the reordering error of host and device: {}",
            failed.len(),
            checks.len(),
            a.tolerance,
            failed.join("; ")
        );
    }
    Ok(())
}

/// A network of `stages` (input channels and side from the first) with a k = 1 head on
/// the last, BatchNorm's γ, β and running statistics away from their defaults.
fn network(input: [usize; 3], stages: &[StageSpec], classes: usize, seed: u64) -> ConvNet {
    let mut cin = input[0];
    let mut list = Vec::new();
    for (i, &StageSpec { downsample, out }) in stages.iter().enumerate() {
        let cin_block = if downsample == Downsample::Psi { 4 * cin } else { cin };
        let mut conv = new_block(cin_block, out, seed + i as u64);
        let s = seed as u32 * 16 + i as u32 * 4;
        conv.bn.weight = fill(out, s).iter().map(|v| 1.0 + 0.3 * v).collect();
        conv.bn.bias = fill(out, s + 1).iter().map(|v| 0.2 * v).collect();
        conv.bn.running_mean = fill(out, s + 2).iter().map(|v| 0.1 * v).collect();
        conv.bn.running_var = fill(out, s + 3).iter().map(|v| 1.0 + 0.5 * v).collect();
        list.push(ConvStage { downsample, conv });
        cin = out;
    }
    let head = CnnHead { convs: Vec::new(), linear: new_linear(4 * cin, classes, seed + 100) };
    ConvNet::from_cnn(&Cnn { input, stages: list, head })
}

/// Gradients of `net` trained from stage `first`, on the host and on `dev`; the floor is
/// the host against itself on the batch in reverse order.
fn conv_gradients<D: Backend + 'static>(
    dev: &D,
    what: String,
    net: &ConvNet,
    first: usize,
    images: &[f32],
    n: usize,
) -> Check {
    let settings = ConvSettings {
        optimizer: OptimizerSpec::Sgd { lr: 0.05, momentum: 0.9, nesterov: true },
        weight_decay: 5e-4,
        label_smoothing: 0.1,
    };
    let label = |i: usize| (i * 7 % 10) as u8;
    let labels: Vec<u8> = (0..n).map(label).collect();
    let host = |images: &[f32], labels: &[u8]| {
        let (x, s) = net.prefix_features(images, n, first);
        let (loss, grads) = ConvTrainer::new(net.clone(), first, &settings).gradients(&x, s, labels);
        (x, s, loss, grads)
    };
    let (x, s, hl, hg) = host(images, &labels);
    let dim = images.len() / n;
    let reversed: Vec<f32> = (0..n).rev().flat_map(|i| images[i * dim..(i + 1) * dim].iter().copied()).collect();
    let reversed_labels: Vec<u8> = (0..n).rev().map(label).collect();
    let (xr, _, rl, rg) = host(&reversed, &reversed_labels);
    let (dl, dg) = DeviceConvTrainer::new(dev, net, first, &settings).gradients(&x, s, &labels);
    let (drl, drg) = DeviceConvTrainer::new(dev, net, first, &settings).gradients(&xr, s, &reversed_labels);
    let depth = net.stages.len();
    let names = trainable_names(depth, first, 0);
    let last = net.stages[depth - 1].1.cout;
    // The host keeps the linear weight `[in, out]`, the device `[out, in]`.
    let layout = |name: &str, h: Vec<f32>| {
        if name == TensorPath::head_linear().weight() {
            layerwise_nn::host::transpose(&h, 4 * last, 10)
        } else {
            h
        }
    };
    let loss = || ("loss".to_string(), vec![hl]);
    let floor = worst_of(
        String::new(),
        names.iter().zip(rg).zip(&hg).map(|((name, r), h)| (name.clone(), r, h.clone())).chain([(
            loss().0,
            vec![rl],
            loss().1,
        )]),
    );
    let device_floor = worst_of(
        String::new(),
        names.iter().zip(drg).zip(&dg).map(|((name, r), d)| (name.clone(), r, d.clone())).chain([(
            loss().0,
            vec![drl],
            vec![dl],
        )]),
    );
    let pairs = names.iter().zip(dg).zip(hg).map(|((name, d), h)| (name.clone(), d, layout(name, h)));
    let mut check = worst_of(what, pairs.chain([(loss().0, vec![dl], loss().1)]));
    check.floor = floor.rel;
    check.device_floor = device_floor.rel;
    check
}

/// Every check, on `dev`.
fn all_checks<D: Backend + 'static>(dev: &D, stages: &[StageSpec], n: usize) -> Vec<Check> {
    let full = network([3, 32, 32], stages, 10, 1);
    let images = fill(n * 3 * 32 * 32, 7);
    let mut checks = Vec::new();
    let (mut host, mut device) = (Vec::new(), Vec::new());
    full.logits_chunks(&images, n, |_, l| host.extend_from_slice(l));
    DeviceConvNet::new(&full, dev).logits_chunks(&images, n, |_, l| device.extend_from_slice(l));
    checks.push(worst_of("cnn (5 stages): logits".into(), [("logits".to_string(), device, host)]));
    for k in 0..stages.len() {
        let net = network([3, 32, 32], &stages[..=k], 10, 1);
        let what = format!("cnn grow stage {}: gradients", k + 1);
        checks.push(conv_gradients(dev, what, &net, k, &images, n));
    }
    checks.push(conv_gradients(dev, "cnn fine-tune all 5 stages: gradients".into(), &full, 0, &images, n));
    let psi_stages =
        [StageSpec { downsample: Downsample::None, out: 32 }, StageSpec { downsample: Downsample::Psi, out: 64 }];
    let psi = network([3, 32, 32], &psi_stages, 10, 3);
    checks.push(conv_gradients(dev, "cnn psi (32, psi:64) fine-tune: gradients".into(), &psi, 0, &images, n));
    checks.extend(mlp_checks(dev));
    checks
}

/// The MLP's logits and a grown layer's gradients (with the head's and the loss) on `d`.
type MlpRun = (Vec<f32>, Result<Vec<(String, Vec<f32>)>>);

fn mlp_on<D: Backend>(d: &D, frozen: &Dense, grown: &Dense, head: &Dense, x: &[f32], rows: usize) -> MlpRun {
    let (dim, classes) = (frozen.inputs, head.outputs);
    let layers = [Layer::from_dense(frozen, d), Layer::from_dense(grown, d)];
    let head = Layer::from_dense(head, d);
    let xb: Matrix<D> = d.tensor_from_vec(x.to_vec(), (rows, dim));
    let logits = layerwise_nn::forward(&layers, Some(&head), xb.clone()).as_vec();
    let features = layers[0].apply(xb).relu();
    let mut y = vec![0f32; rows * classes];
    for r in 0..rows {
        y[r * classes + r * 3 % classes] = 1.0;
    }
    let yb: Matrix<D> = d.tensor_from_vec(y, (rows, classes));
    let grads = batch_gradients(&layers[1..], &head, true, features, yb, &[]).map(|g| {
        let mut out = vec![("loss".to_string(), g.loss.as_vec())];
        for (gw, gb) in &g.layers {
            let [w, b] = TensorPath::hidden(1).pair();
            out.push((w, gw.as_vec()));
            out.push((b, gb.as_vec()));
        }
        if let Some((gw, gb)) = &g.head {
            let [w, b] = TensorPath::head().pair();
            out.push((w, gw.as_vec()));
            out.push((b, gb.as_vec()));
        }
        out
    });
    (logits, grads)
}

/// The tutorial's MLP (3072 → 256 → 256, 10 classes, batch 250): logits against the host
/// kernels, a grown depth 2's gradients against dfdx's CPU.
fn mlp_checks<D: Backend>(dev: &D) -> Vec<Check> {
    let (rows, dim, width, classes) = (250, 3072, 256, 10);
    let frozen = glorot_dense(dim, width, 1);
    let mut grown = glorot_dense(width, width, 2);
    grown.bias = fill(width, 3).iter().map(|v| 0.1 * v).collect();
    let head = glorot_dense(width, classes, 4);
    let x: Vec<f32> = fill(rows * dim, 5).iter().map(|v| 0.5 * (v + 1.0)).collect();
    let mut host = Vec::new();
    let hidden = [frozen.clone(), grown.clone()];
    layerwise_nn::host::forward_chunks(&hidden, Some(&head), &x, rows, rows, |_, l| host.extend_from_slice(l));
    let (device_logits, device_grads) = mlp_on(dev, &frozen, &grown, &head, &x, rows);
    let (_, cpu_grads) = mlp_on(&layerwise_nn::device::cpu(0), &frozen, &grown, &head, &x, rows);
    let logits = worst_of("mlp (3072-256-256-10): logits".into(), [("logits".to_string(), device_logits, host)]);
    let what = "mlp grow depth 2: gradients (vs dfdx cpu)".to_string();
    let grads = match (device_grads, cpu_grads) {
        (Ok(d), Ok(h)) => worst_of(what, d.into_iter().zip(h).map(|((name, d), (_, h))| (name, d, h))),
        (Err(e), _) | (_, Err(e)) => Check {
            what,
            worst: format!("error: {e:#}"),
            rel: f64::INFINITY,
            max: f64::INFINITY,
            floor: 0.0,
            device_floor: 0.0,
        },
    };
    vec![logits, grads]
}
