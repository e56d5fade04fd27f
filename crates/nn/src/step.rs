//! What a training loop asks of a network being trained: one trait for dense stacks
//! ([`crate::dense_step`]) and convolutional stages ([`crate::conv_step`]) alike, whichever
//! kernels run them (the host kernels or dfdx, [`crate::Kernels`], chosen once when the
//! step is made).
//!
//! A network being trained is a frozen part (layers or stages that do not train, possibly
//! none) and a trained part. Batches come two ways: rows of the split kept once with
//! [`Step::keep_train`] (the trained part's input, the frozen part already applied; a GPU
//! keeps it resident and gathers each batch there), or raw inputs made per batch
//! (augmented images), which go through the frozen part first ([`Step::step_inputs`]).
//! Loss and accuracy add up inside the step and are read once per epoch
//! ([`Step::take_sums`]): on a GPU nothing is read back per batch. Whatever leaves a step
//! (tensors, the optimizer's state) is in the checkpoint's names and layouts, so a saved
//! state does not depend on the kernels.

use crate::{EvalSums, Moments};
use anyhow::{bail, Result};
use std::borrow::Cow;

/// Tensors by checkpoint name, in the checkpoint's layout.
pub type Named = Vec<(String, Vec<f32>)>;

/// A network being trained.
pub trait Step<'a> {
    /// Keep the training split: the trained part's input (one row per example, the
    /// frozen part already applied) and the labels, for [`Step::step_rows`].
    fn keep_train(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()>;
    /// Keep the validation split the same way, for [`Step::evaluate_val`].
    fn keep_val(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()>;
    /// The trained part's input for `n` raw inputs (the frozen part applied), on the host.
    fn prefix(&self, inputs: &[f32], n: usize) -> Vec<f32>;
    /// One step (learning rate `lr`) on rows `rows` of the kept training split; dropout
    /// masks, where the network has dropout, come from `dropout_seed`. Returns the batch's
    /// mean loss where it is known without waiting for a device (the host kernels).
    /// Nothing is updated when the loss is not finite.
    fn step_rows(&mut self, rows: &[usize], dropout_seed: u64, lr: f64) -> Result<Option<f32>>;
    /// One step on a batch of raw inputs `x` with `labels` (augmented images): the frozen
    /// part runs first. Returns the loss, as [`Step::step_rows`], and the seconds the
    /// frozen part took where they are known apart (0 otherwise).
    fn step_inputs(&mut self, x: &[f32], labels: &[u8], dropout_seed: u64, lr: f64) -> Result<(Option<f32>, f64)>;
    /// The mean loss and accuracy of this epoch's steps so far, where known without
    /// waiting for a device (for a progress bar).
    fn running(&self) -> Option<(f64, f64)>;
    /// Loss and accuracy of the steps since the last call (one read from a device).
    fn take_sums(&mut self) -> EvalSums;
    /// Loss, accuracy and confusion over the kept validation split, in inference mode.
    fn evaluate_val(&self) -> Result<EvalSums>;
    /// Every tensor of the trained part (BatchNorm's running statistics included), by
    /// checkpoint name, copied to the host.
    fn tensors(&self) -> Named;
    /// The optimizer's step count and state, copied to the host.
    fn optimizer_state(&self) -> (i32, Moments);
    /// Decoupled learning's step (`train::decoupled`): one step as [`Step::step_rows`] on
    /// `x`, a batch of the trained part's input laid out as [`Step::keep_train`] keeps it,
    /// returning also the output of the first trained block in training mode, before
    /// anything of the next stage: what the next stage trains on.
    fn step_handing_on(
        &mut self,
        x: &[f32],
        labels: &[u8],
        dropout_seed: u64,
        lr: f64,
    ) -> Result<(Option<f32>, Vec<f32>)> {
        let _ = (x, labels, dropout_seed, lr);
        bail!("these kernels do not train stages decoupled yet: run the decoupled schedule on the CPU")
    }
    /// Decoupled learning's evaluation: adds the loss and predictions of `x` (laid out as
    /// [`Step::keep_val`] keeps it) in inference mode to `sums`, and returns the first
    /// trained block's output.
    fn infer_handing_on(&self, x: &[f32], labels: &[u8], sums: &mut EvalSums) -> Result<Vec<f32>> {
        let _ = (x, labels, sums);
        bail!("these kernels do not evaluate stages decoupled yet: run the decoupled schedule on the CPU")
    }
}
