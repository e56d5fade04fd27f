//! A depth's inputs: the frozen prefix's output, computed from the images or read from
//! the parent's features file once that file is verified.

use crate::run::Run;
use anyhow::{bail, Result};
use layerwise_core::config::Regime;
use layerwise_core::dataset::Split;
use layerwise_core::features::{Features, FEATURES_FILE};
use layerwise_nn::{Backend, Frozen};
use std::borrow::Cow;
use std::path::Path;

/// Rows of each split the training stage recomputes from the images to check a parent's
/// features file against the parent checkpoint.
const SPOT_ROWS: usize = 16;

impl Run<'_> {
    /// The frozen prefix's output for a split, on the host: the images themselves when
    /// nothing is frozen (borrowed from the memory map), else computed once, here.
    pub(crate) fn features<D: Backend>(
        &self,
        prefix: &Frozen<'_, D>,
        split: Split,
        rows: &mut usize,
    ) -> Result<(Cow<'_, [f32]>, Vec<u8>)> {
        let view = self.ds.split(split)?;
        let n = view.len();
        let feats = if prefix.is_empty() {
            view.images
        } else {
            *rows += n;
            Cow::Owned(prefix.apply(&view.images, n))
        };
        Ok((feats, view.labels.to_vec()))
    }

    /// The parent depth's `features.safetensors`, when it is there, belongs to the parent
    /// checkpoint and this dataset, matches its content hash, and agrees with `prefix`
    /// (the frozen stack) on sample rows recomputed from the images; says why one that is
    /// there is not used.
    pub(crate) fn parent_features<D: Backend>(&self, prefix: &Frozen<'_, D>) -> Option<Features> {
        let plan = self.plan;
        let (from, sha, last) = (self.opts.from.as_ref()?, self.parent_sha.as_deref()?, plan.prefix.last()?);
        if self.opts.regime != Regime::Grow {
            return None;
        }
        let path = from.parent().unwrap_or(Path::new(".")).join(FEATURES_FILE);
        if !path.exists() {
            return None;
        }
        let sizes = &self.ds.meta.split_sizes;
        let checked = Features::open_for(&path, sha, &self.ds.meta.fingerprint, last.outputs, sizes.train, sizes.val)
            .and_then(|f| self.spot_check(&f, prefix).map(|()| f));
        match checked {
            Ok(f) => {
                self.say(&format!("frozen features read from {}", path.display()));
                Some(f)
            }
            Err(e) => {
                self.say(&format!(
                    "not using {} ({e:#}): computing the frozen features from the images",
                    path.display()
                ));
                None
            }
        }
    }

    /// Recompute [`SPOT_ROWS`] rows of each split through the frozen stack from the
    /// images and compare them with the features file: a file computed with other weights
    /// (another run's, its metadata rewritten) is refused.
    pub(crate) fn spot_check<D: Backend>(&self, f: &Features, prefix: &Frozen<'_, D>) -> Result<()> {
        for split in [Split::Train, Split::Val] {
            let view = self.ds.split(split)?;
            let (n, dim, width) = (view.len(), self.ds.meta.input_size(), f.meta.width);
            if n == 0 {
                continue;
            }
            let rows: Vec<usize> = (0..SPOT_ROWS.min(n)).map(|i| i * (n - 1) / (SPOT_ROWS - 1).max(1)).collect();
            let images: Vec<f32> =
                rows.iter().flat_map(|&r| view.images[r * dim..(r + 1) * dim].iter().copied()).collect();
            let recomputed = prefix.apply(&images, rows.len());
            let stored = f.split(split)?;
            for (k, &r) in rows.iter().enumerate() {
                let (a, b) = (&stored[r * width..(r + 1) * width], &recomputed[k * width..(k + 1) * width]);
                if let Some(j) = a.iter().zip(b).position(|(x, y)| (x - y).abs() > 1e-4 * (1.0 + y.abs())) {
                    bail!(
                        "{split} row {r}, value {j}: the file holds {}, the parent checkpoint gives {} (the file was \
                         computed with other weights)",
                        a[j],
                        b[j]
                    );
                }
            }
        }
        Ok(())
    }
}
