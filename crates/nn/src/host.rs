//! The CPU fast path: dense layers on host buffers, their products computed by the
//! `gemm` crate at its current release (0.19), which reaches this machine's FMA peak where
//! dfdx 0.13's own CPU matmul (gemm 0.15) reaches about two thirds of it.
//!
//! Everything here works on row-major `f32` slices and [`Dense`] layers (`[out, in]`
//! weights): the forward pass with bias and ReLU fused into one pass over the product's
//! output, a training step's backward pass (written out by hand, checked against dfdx's
//! autograd in `tests/gradients.rs`), and the buffers a step needs, allocated once.
//! [`crate::dense_step`] runs this path when it is handed [`crate::Kernels::Host`] (the CPU's choice).

use crate::EvalSums;
use layerwise_core::checkpoint::Dense;

/// A matrix operand: its data with row and column strides (a transposed view swaps them).
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

impl<'a> View<'a> {
    /// `data` as a row-major `rows × cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "view larger than its data");
        Self { data, rows, cols, rs: cols as isize, cs: 1 }
    }

    /// A `rows × cols` matrix whose element `(i, j)` is `data[i·rs + j·cs]`.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        let last = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 };
        assert!(data.len() >= last, "view larger than its data");
        Self { data, rows, cols, rs: rs as isize, cs: cs as isize }
    }

    /// The transpose of [`View::rows`]`(data, rows, cols)`: a `cols × rows` matrix.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "view larger than its data");
        Self { data, rows: cols, cols: rows, rs: 1, cs: cols as isize }
    }
}

/// [`matmul`] on the calling thread only (for callers that parallelize over tiles).
pub fn matmul_serial(c: &mut [f32], a: View<'_>, b: View<'_>, accumulate: bool) {
    product(c, a, b, accumulate, false)
}

/// `c = a·b` (or `c += a·b` with `accumulate`), `c` row-major `a.rows × b.cols`.
pub fn matmul(c: &mut [f32], a: View<'_>, b: View<'_>, accumulate: bool) {
    product(c, a, b, accumulate, true)
}

fn product(c: &mut [f32], a: View<'_>, b: View<'_>, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    assert!(c.len() >= m * n, "output smaller than the product");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // Small products (an output layer's) are not worth waking other threads for.
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 && m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above hold every operand inside its slice: `a` spans `m × k`
    // elements at strides (rs, cs) within `a.data` (checked by its constructor), `b`
    // likewise `k × n`, and `c` is `m × n` row-major within `c`; `c` is a unique borrow,
    // so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A dense layer in the host kernels' layout: the weight stored transposed, `[in, out]`
/// row-major, so the forward product `x·Wᵀ` reads it as a plain row-major operand (gemm
/// is about 15 % faster on it than on a transposed view).
#[derive(Clone, Debug, PartialEq)]
pub struct HostLayer {
    /// Inputs.
    pub inputs: usize,
    /// Outputs.
    pub outputs: usize,
    /// `Wᵀ`, `[inputs × outputs]` row-major.
    pub wt: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
}

/// `m` (row-major `rows × cols`) transposed.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    // Blocks keep both sides in cache.
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = m[r * cols + c];
                }
            }
        }
    }
    out
}

impl HostLayer {
    /// From a checkpoint layer (`[out, in]` weight).
    pub fn from_dense(d: &Dense) -> Self {
        Self {
            inputs: d.inputs,
            outputs: d.outputs,
            wt: transpose(&d.weight, d.outputs, d.inputs),
            bias: d.bias.clone(),
        }
    }

    /// Back to a checkpoint layer.
    pub fn to_dense(&self) -> Dense {
        Dense {
            inputs: self.inputs,
            outputs: self.outputs,
            weight: transpose(&self.wt, self.inputs, self.outputs),
            bias: self.bias.clone(),
        }
    }
}

/// `y = x·Wᵀ + b` for `rows` rows of `x`, then ReLU when `relu`, into `y` (`rows × out`):
/// the product, then bias and ReLU in one pass over its output.
pub fn dense_forward(layer: &HostLayer, x: &[f32], rows: usize, y: &mut [f32], relu: bool) {
    forward_layer(layer, x, rows, y, relu, true)
}

/// [`dense_forward`], its product on this thread only unless `parallel`.
fn forward_layer(layer: &HostLayer, x: &[f32], rows: usize, y: &mut [f32], relu: bool, parallel: bool) {
    let out = layer.outputs;
    let y = &mut y[..rows * out];
    product(y, View::rows(x, rows, layer.inputs), View::rows(&layer.wt, layer.inputs, out), false, parallel);
    for row in y.chunks_exact_mut(out) {
        if relu {
            for (v, b) in row.iter_mut().zip(&layer.bias) {
                *v = (*v + b).max(0.0);
            }
        } else {
            for (v, b) in row.iter_mut().zip(&layer.bias) {
                *v += b;
            }
        }
    }
}

/// Run `hidden` (each followed by ReLU) and then `head` (if any) over `rows` rows of
/// `data`, `chunk` rows at a time, handing each chunk's first row and its outputs to `each`.
pub fn forward_chunks(
    hidden: &[Dense],
    head: Option<&Dense>,
    data: &[f32],
    rows: usize,
    chunk: usize,
    each: impl FnMut(usize, &[f32]),
) {
    let hidden: Vec<HostLayer> = hidden.iter().map(HostLayer::from_dense).collect();
    let head = head.map(HostLayer::from_dense);
    run_chunks(&hidden, head.as_ref(), data, rows, chunk, each);
}

/// [`forward_chunks`] for layers in the host layout.
fn run_chunks(
    hidden: &[HostLayer],
    head: Option<&HostLayer>,
    data: &[f32],
    rows: usize,
    chunk: usize,
    mut each: impl FnMut(usize, &[f32]),
) {
    let dim = data.len().checked_div(rows).unwrap_or(0);
    let widest = hidden.iter().chain(head).map(|l| l.outputs).max().unwrap_or(dim);
    let chunk = chunk.max(1);
    // Two buffers in turn: each layer reads one and writes the other.
    let (mut cur, mut next) = (vec![0f32; chunk * widest], vec![0f32; chunk * widest]);
    let layers: Vec<(&HostLayer, bool)> = hidden.iter().map(|l| (l, true)).chain(head.map(|h| (h, false))).collect();
    for start in (0..rows).step_by(chunk) {
        let n = chunk.min(rows - start);
        let x = &data[start * dim..(start + n) * dim];
        let mut width = dim;
        for (i, &(layer, relu)) in layers.iter().enumerate() {
            let input: &[f32] = if i == 0 { x } else { &cur[..n * width] };
            dense_forward(layer, input, n, &mut next, relu);
            std::mem::swap(&mut cur, &mut next);
            width = layer.outputs;
        }
        each(start, if layers.is_empty() { x } else { &cur[..n * width] });
    }
}

/// The outputs of `hidden` over `rows` rows of `data`, in chunks.
pub fn features(hidden: &[Dense], data: &[f32], rows: usize, chunk: usize) -> Vec<f32> {
    let out_dim = hidden.last().map_or(data.len().checked_div(rows).unwrap_or(0), |l| l.outputs);
    let mut out = Vec::with_capacity(rows * out_dim);
    forward_chunks(hidden, None, data, rows, chunk, |_, y| out.extend_from_slice(y));
    out
}

/// Loss, predictions and the confusion matrix of `hidden` + `head` over host rows.
pub fn evaluate(hidden: &[Dense], head: &Dense, data: &[f32], labels: &[u8], chunk: usize) -> EvalSums {
    let mut sums = EvalSums::new(head.outputs);
    forward_chunks(hidden, Some(head), data, labels.len(), chunk, |start, logits| {
        sums.add(logits, &labels[start..]);
    });
    sums
}

/// [`evaluate`] for layers already in the host layout (the training loop's validation).
pub fn evaluate_host(hidden: &[HostLayer], head: &HostLayer, data: &[f32], labels: &[u8], chunk: usize) -> EvalSums {
    let mut sums = EvalSums::new(head.outputs);
    run_chunks(hidden, Some(head), data, labels.len(), chunk, |start, logits| sums.add(logits, &labels[start..]));
    sums
}

/// Column sums of a row-major `rows × cols` matrix, into `out` (overwritten).
fn column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in m.chunks_exact(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// Rows from which a batch of small layers is cut into two halves, each run through the
/// whole step on its own thread (its products serial), their gradients added: one fork a
/// step instead of one per product. A `[250 × 256]·[256 × 256]` product on gemm's two
/// threads ran at about half their rate inside the seed's steps, the other thread waking
/// for each product; halves made those epochs 0.060 → 0.050 s (`cargo xtask bench`,
/// depths 2 and 10).
const HALVES_FROM: usize = 128;

/// The largest layer (weights) a step runs in halves: depth 1's `3072 × 256` trains 10 %
/// slower in halves than with gemm's own threads (two partial gradients of 3 MB each).
const HALVES_MAX_WEIGHTS: usize = 1 << 18;

/// Whether steps of `batch` rows over `trainable` and `head` run in two halves.
fn in_halves(trainable: &[HostLayer], head: &HostLayer, batch: usize) -> bool {
    batch >= HALVES_FROM && trainable.iter().chain([head]).all(|l| l.wt.len() <= HALVES_MAX_WEIGHTS)
}

/// The buffers of one training step, sized for `batch` rows, allocated once.
pub struct StepBuffers {
    batch: usize,
    /// Per trainable layer: its output after ReLU and dropout (the next layer's input).
    a: Vec<Vec<f32>>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    /// Per half of the batch: the gradient with respect to an activation and to its
    /// pre-activation (reused per layer).
    scratch: [(Vec<f32>, Vec<f32>); 2],
    /// Each trainable layer's (weight, bias) gradient, then the head's; weights in the
    /// host layout (`[in, out]`).
    pub grads: Vec<(Vec<f32>, Vec<f32>)>,
    /// The second half's gradients, before they are added to `grads` (empty when steps
    /// run whole: [`in_halves`]).
    second: Vec<(Vec<f32>, Vec<f32>)>,
}

impl StepBuffers {
    /// Buffers for `trainable` layers and `head`, `batch` rows.
    pub fn new(trainable: &[HostLayer], head: &HostLayer, batch: usize) -> Self {
        let widest = trainable.iter().map(|l| l.outputs).max().unwrap_or(0).max(head.inputs);
        let grads = || -> Vec<(Vec<f32>, Vec<f32>)> {
            trainable
                .iter()
                .chain(std::iter::once(head))
                .map(|l| (vec![0.0; l.wt.len()], vec![0.0; l.bias.len()]))
                .collect()
        };
        let halves = in_halves(trainable, head, batch);
        let scratch = |used: bool| {
            let len = if used { batch * widest } else { 0 };
            (vec![0.0; len], vec![0.0; len])
        };
        Self {
            batch,
            a: trainable.iter().map(|l| vec![0.0; batch * l.outputs]).collect(),
            logits: vec![0.0; batch * head.outputs],
            dlogits: vec![0.0; batch * head.outputs],
            scratch: [scratch(true), scratch(halves)],
            grads: grads(),
            second: if halves { grads() } else { Vec::new() },
        }
    }

    /// The logits of the last step (`rows × classes`).
    pub fn logits(&self, rows: usize, classes: usize) -> &[f32] {
        &self.logits[..rows * classes]
    }
}

/// One half's share of a step's buffers: its rows of every activation, of the logits and
/// their gradient, its scratch, and the gradients it writes.
struct Half<'a> {
    a: Vec<&'a mut [f32]>,
    logits: &'a mut [f32],
    dlogits: &'a mut [f32],
    da: &'a mut [f32],
    dz: &'a mut [f32],
    grads: &'a mut [(Vec<f32>, Vec<f32>)],
}

/// Forward and backward of one batch on the host: `trainable` layers (each followed by
/// ReLU and, when `dropout` is not empty, its mask), then `head`, softmax cross-entropy
/// against `labels`. Fills `buf.grads` (the head's last, when `head_trains`) and
/// `buf.logits`; returns the mean loss. No gradient is computed for the input.
///
/// A unit's gradient passes where its output is positive: ReLU's derivative, and a unit
/// dropout zeroed has output 0, so the stored output (after dropout) decides both.
pub fn step(
    trainable: &[HostLayer],
    head: &HostLayer,
    head_trains: bool,
    x: &[f32],
    labels: &[u8],
    dropout: &[Vec<f32>],
    buf: &mut StepBuffers,
) -> f32 {
    let n = labels.len();
    assert!(n <= buf.batch, "batch larger than its buffers");
    let classes = head.outputs;
    let scale = 1.0 / n as f32;
    let dim = x.len() / n.max(1);
    // The first `h` rows and the rest (all rows in one part unless `in_halves`).
    let h = if n >= HALVES_FROM && !buf.second.is_empty() { n.div_ceil(2) } else { n };
    let widths: Vec<usize> = trainable.iter().map(|l| l.outputs).collect();
    let mut halves: [Vec<&mut [f32]>; 2] = [Vec::new(), Vec::new()];
    for (a, &w) in buf.a.iter_mut().zip(&widths) {
        let (first, rest) = a[..n * w].split_at_mut(h * w);
        halves[0].push(first);
        halves[1].push(rest);
    }
    let [a0, a1] = halves;
    let (l0, l1) = buf.logits[..n * classes].split_at_mut(h * classes);
    let (d0, d1) = buf.dlogits[..n * classes].split_at_mut(h * classes);
    let [(da0, dz0), (da1, dz1)] = &mut buf.scratch;
    let first = Half { a: a0, logits: l0, dlogits: d0, da: da0, dz: dz0, grads: &mut buf.grads };
    let masks = |range: std::ops::Range<usize>| -> Vec<&[f32]> {
        dropout.iter().zip(&widths).map(|(m, &w)| &m[range.start * w..range.end * w]).collect()
    };
    let run = |half: Half<'_>, rows: std::ops::Range<usize>, parallel: bool| {
        let masks = masks(rows.clone());
        let x = &x[rows.start * dim..rows.end * dim];
        half_step(trainable, head, head_trains, x, &labels[rows], &masks, scale, half, parallel)
    };
    let loss = if h == n {
        run(first, 0..n, true)
    } else {
        let second = Half { a: a1, logits: l1, dlogits: d1, da: da1, dz: dz1, grads: &mut buf.second };
        let (a, b) = rayon::join(|| run(first, 0..h, false), || run(second, h..n, false));
        // The second half's gradients added to the first's, tensor by tensor in order.
        let t = trainable.len();
        let trained = buf.grads.iter_mut().zip(&buf.second).enumerate().filter(|&(i, _)| i < t || head_trains);
        trained.for_each(|(_, ((gw, gb), (sw, sb)))| {
            gw.iter_mut().zip(sw).chain(gb.iter_mut().zip(sb)).for_each(|(g, s)| *g += s);
        });
        a + b
    };
    (loss / n as f64) as f32
}

/// [`step`] over one part of the batch (`x`, `labels`, dropout's `masks` cut to its rows):
/// its activations, logits and gradients into `half`; the softmax's gradient scaled by
/// `scale` (one over the whole batch); the sum of its rows' losses.
#[allow(clippy::too_many_arguments)]
fn half_step(
    trainable: &[HostLayer],
    head: &HostLayer,
    head_trains: bool,
    x: &[f32],
    labels: &[u8],
    masks: &[&[f32]],
    scale: f32,
    half: Half<'_>,
    parallel: bool,
) -> f64 {
    let Half { mut a, logits, dlogits, da, dz, grads } = half;
    let n = labels.len();
    let classes = head.outputs;
    let mm = |c: &mut [f32], x: View<'_>, y: View<'_>| product(c, x, y, false, parallel);
    // Forward.
    for (i, layer) in trainable.iter().enumerate() {
        let (before, rest) = a.split_at_mut(i);
        let input: &[f32] = if i == 0 { x } else { &before[i - 1][..n * trainable[i - 1].outputs] };
        let out = &mut rest[0][..n * layer.outputs];
        forward_layer(layer, input, n, out, true, parallel);
        if let Some(mask) = masks.get(i) {
            for (v, m) in out.iter_mut().zip(*mask) {
                *v *= m;
            }
        }
    }
    let last: &[f32] = match trainable.len() {
        0 => x,
        t => &a[t - 1][..n * trainable[t - 1].outputs],
    };
    forward_layer(head, last, n, logits, false, parallel);
    // Softmax cross-entropy, summed over the rows, and its gradient (p - y) · scale.
    let mut loss = 0f64;
    for ((row, drow), &label) in
        logits[..n * classes].chunks_exact(classes).zip(dlogits.chunks_exact_mut(classes)).zip(labels)
    {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (d, &v) in drow.iter_mut().zip(row) {
            *d = (v - max).exp();
            sum += *d;
        }
        loss += (sum.ln() + max - row[label as usize]) as f64;
        for d in drow.iter_mut() {
            *d *= scale / sum;
        }
        drow[label as usize] -= scale;
    }
    let dlogits = &dlogits[..n * classes];
    let t = trainable.len();
    if head_trains {
        let (gw, gb) = &mut grads[t];
        mm(gw, View::transposed(last, n, head.inputs), View::rows(dlogits, n, classes));
        column_sums(dlogits, classes, gb);
    }
    if t == 0 {
        return loss;
    }
    // Backward through the trainable layers, last first: da = dlogits·H.
    mm(da, View::rows(dlogits, n, classes), View::transposed(&head.wt, head.inputs, classes));
    for i in (0..t).rev() {
        let layer = &trainable[i];
        let w = layer.outputs;
        let dz = &mut dz[..n * w];
        let ai = &a[i][..n * w];
        let (gw, gb) = &mut grads[i];
        // The pre-activation's gradient and, in the same pass, the bias gradient (its
        // column sums).
        gb.fill(0.0);
        let rows = dz.chunks_exact_mut(w).zip(da[..n * w].chunks_exact(w)).zip(ai.chunks_exact(w));
        for (r, ((dz_row, da_row), a_row)) in rows.enumerate() {
            match masks.get(i) {
                Some(mask) => {
                    let m_row = &mask[r * w..(r + 1) * w];
                    for ((((d, &da), &av), &m), g) in
                        dz_row.iter_mut().zip(da_row).zip(a_row).zip(m_row).zip(gb.iter_mut())
                    {
                        *d = if av > 0.0 { da * m } else { 0.0 };
                        *g += *d;
                    }
                }
                None => {
                    for (((d, &da), &av), g) in dz_row.iter_mut().zip(da_row).zip(a_row).zip(gb.iter_mut()) {
                        *d = if av > 0.0 { da } else { 0.0 };
                        *g += *d;
                    }
                }
            }
        }
        let input: &[f32] = if i == 0 { x } else { &a[i - 1][..n * trainable[i - 1].outputs] };
        mm(gw, View::transposed(input, n, layer.inputs), View::rows(dz, n, w));
        if i > 0 {
            // The gradient of the layer below's activation (never of the input itself).
            mm(da, View::rows(dz, n, w), View::transposed(&layer.wt, layer.inputs, w));
        }
    }
    loss
}
