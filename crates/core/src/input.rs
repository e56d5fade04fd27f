//! The input contract: how a model wants its input, recorded in every checkpoint (and
//! derived from the dataset it was trained on), so that a model can be used on images it
//! never saw: by `layerwise-predict`, by an exported ONNX graph, or by a Python user who
//! loads the checkpoint with `safetensors`.
//!
//! A model's input is one flat `f32` row per image: the pixels in **CHW** order (every row
//! of channel 0, then channel 1, ...; not the HWC order image files decode to), each pixel
//! `p` in 0..=255 scaled to `(p / 255 - mean[c]) / std[c]` (for `unit`, mean 0 and std 1:
//! just `p / 255`).

use crate::config::Normalize;
use crate::dataset::DatasetMeta;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How a model wants its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputContract {
    /// `[channels, height, width]`.
    pub shape: [usize; 3],
    /// The order of the flat row: always `CHW`.
    pub layout: String,
    /// What the channels are: `RGB` (3 channels) or `gray` (1).
    pub channels: String,
    /// `unit` (p/255) or `standardize` ((p/255 - mean) / std, the training split's).
    pub normalize: Normalize,
    /// Per-channel mean subtracted after /255.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f64>,
    /// Class names, index = output.
    pub classes: Vec<String>,
}

impl InputContract {
    /// The contract of a model trained on `data`.
    pub fn of_dataset(data: &DatasetMeta) -> Self {
        Self::new(data.image_shape, &data.normalization, data.classes.clone())
    }

    /// The contract of images of `shape` (CHW; one channel is `gray`, others `RGB`) scaled by
    /// `normalization`, for `classes`.
    pub fn new(shape: [usize; 3], normalization: &crate::dataset::Normalization, classes: Vec<String>) -> Self {
        Self {
            shape,
            layout: "CHW".into(),
            channels: if shape[0] == 1 { "gray".into() } else { "RGB".into() },
            normalize: normalization.kind,
            mean: normalization.mean.clone(),
            std: normalization.std.clone(),
            classes,
        }
    }

    /// Values per image.
    pub fn input_size(&self) -> usize {
        self.shape.iter().product()
    }

    /// Check that the contract can be applied, naming what is wrong: its shape within the
    /// image limits (checked arithmetic, so no shape wraps to a small one), `channels`
    /// saying what the shape holds (`RGB` 3, `gray` 1), a mean and a std per channel within
    /// [`crate::limits::CONTRACT_MEAN`] and [`crate::limits::CONTRACT_STD`], and `unit`
    /// meaning mean 0 and std 1.
    pub fn validate(&self) -> Result<()> {
        let c = self.shape[0];
        if self.layout != "CHW" {
            bail!("input contract: layout `{}` is not supported (CHW)", self.layout);
        }
        crate::limits::image_values("input contract", self.shape)?;
        match (self.channels.as_str(), c) {
            ("RGB", 3) | ("gray", 1) => {}
            (name, c) => bail!(
                "input contract: channels `{name}` with {c} channels in its shape {:?}: `RGB` has 3, `gray` 1",
                self.shape
            ),
        }
        if self.mean.len() != c || self.std.len() != c {
            bail!("input contract: shape {:?} with {} means and {} stds", self.shape, self.mean.len(), self.std.len());
        }
        let (lo, hi) = crate::limits::CONTRACT_MEAN;
        if let Some(m) = self.mean.iter().find(|m| !(lo..=hi).contains(*m)) {
            bail!(
                "input contract: mean {m:e} is outside [{lo}, {hi}] (pixels are p/255 before the mean is subtracted): \
                 the checkpoint was edited or damaged"
            );
        }
        let (lo, hi) = crate::limits::CONTRACT_STD;
        if let Some(s) = self.std.iter().find(|s| !(lo..=hi).contains(*s)) {
            bail!(
                "input contract: std {s:e} is outside [{lo:e}, {hi}] (pixels are p/255 before the std divides): the \
                 checkpoint was edited or damaged"
            );
        }
        if self.normalize == Normalize::Unit
            && (self.mean.iter().any(|&m| m != 0.0) || self.std.iter().any(|&s| s != 1.0))
        {
            bail!(
                "input contract: normalize `unit` means mean 0 and std 1, but it says mean {:?} and std {:?}: the \
                 checkpoint was edited or damaged",
                self.mean,
                self.std
            );
        }
        Ok(())
    }

    /// Images' pixels (`CHW`, 0..=255, whole images one after another) as the model's
    /// input rows: exactly the floats `layerwise-prepare` stores for the same pixels.
    pub fn normalize_chw(&self, pixels: &[u8]) -> Vec<f32> {
        let n = crate::dataset::Normalization { kind: self.normalize, mean: self.mean.clone(), std: self.std.clone() };
        let mut out = Vec::with_capacity(pixels.len());
        n.apply(pixels, self.shape, &mut out);
        out
    }

    /// Refuse a dataset whose images do not follow this contract, naming what differs.
    pub fn check_dataset(&self, data: &DatasetMeta, what: &str) -> Result<()> {
        let theirs = Self::of_dataset(data);
        let differs = |field: &str, a: String, b: String| {
            anyhow::anyhow!(
                "{what} wants input with {field} {a}, but the dataset has {b}: use data prepared the way the model's \
                 training data was (its `layerwise.input` metadata says how)"
            )
        };
        if theirs.shape != self.shape {
            return Err(differs("shape", format!("{:?}", self.shape), format!("{:?}", theirs.shape)));
        }
        if theirs.normalize != self.normalize || theirs.mean != self.mean || theirs.std != self.std {
            return Err(differs(
                "normalization",
                format!("{} (mean {:?}, std {:?})", self.normalize, self.mean, self.std),
                format!("{} (mean {:?}, std {:?})", theirs.normalize, theirs.mean, theirs.std),
            ));
        }
        if theirs.classes != self.classes {
            return Err(differs("classes", format!("{:?}", self.classes), format!("{:?}", theirs.classes)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::dataset::{Normalization, SplitSizes};
    use crate::input::DatasetMeta;
    use crate::input::InputContract;

    fn meta(normalization: Normalization) -> DatasetMeta {
        DatasetMeta {
            version: crate::dataset::DATASET_VERSION,
            name: "cifar-10".into(),
            classes: crate::cifar10::CLASSES.iter().map(|s| s.to_string()).collect(),
            image_shape: [3, 32, 32],
            normalization,
            val_fraction: 0.2,
            split_sizes: SplitSizes { train: 1, val: 1, test: 1 },
            source_kind: "binary-folder".into(),
            sources: vec![],
            fingerprint: "f".into(),
        }
    }

    #[test]
    fn the_contract_is_the_datasets_and_refuses_another_normalization() {
        let unit = meta(Normalization::unit(3));
        let c = InputContract::of_dataset(&unit);
        c.validate().unwrap();
        assert_eq!((c.layout.as_str(), c.channels.as_str(), c.input_size()), ("CHW", "RGB", 3072));
        c.check_dataset(&unit, "the model").unwrap();
        let std = Normalization {
            kind: crate::config::Normalize::Standardize,
            mean: vec![0.49, 0.48, 0.45],
            std: vec![0.25, 0.24, 0.26],
        };
        let err = format!("{:#}", c.check_dataset(&meta(std.clone()), "the model").unwrap_err());
        assert!(err.contains("normalization unit") && err.contains("standardize"), "{err}");
        // Pixels become exactly the floats prepare stores (its Normalization::apply).
        let pixels: Vec<u8> = (0..3072).map(|i| (i * 7 % 256) as u8).collect();
        let mut stored = Vec::new();
        std.apply(&pixels, [3, 32, 32], &mut stored);
        assert!(InputContract::of_dataset(&meta(std)).normalize_chw(&pixels) == stored);
        let bad = InputContract { std: vec![0.0, 1.0, 1.0], ..c };
        assert!(bad.validate().is_err());
    }

    /// Each contract a crafted checkpoint carried that was accepted before, refused by name.
    #[test]
    fn crafted_contracts_are_refused_saying_what_is_wrong() {
        let std = Normalization {
            kind: crate::config::Normalize::Standardize,
            mean: vec![0.49, 0.48, 0.45],
            std: vec![0.25, 0.24, 0.26],
        };
        let good = InputContract::of_dataset(&meta(std));
        good.validate().unwrap();
        let refused = |c: InputContract, says: &str| {
            let e = format!("{:#}", c.validate().unwrap_err());
            assert!(e.contains(says), "{says:?} not in {e:?}");
        };
        // The shape's product wraps to 3072 in unchecked arithmetic.
        refused(InputContract { shape: [3, 9_223_372_036_854_775_840, 32], ..good.clone() }, "above the limit");
        refused(InputContract { shape: [3, 16384, 16384], ..good.clone() }, "more than 67108864 values");
        refused(InputContract { std: vec![1e-300, 0.24, 0.26], ..good.clone() }, "std 1e-300 is outside");
        refused(InputContract { mean: vec![1e300, 0.48, 0.45], ..good.clone() }, "mean 1e300 is outside");
        refused(InputContract { channels: "gray".into(), ..good.clone() }, "channels `gray` with 3 channels");
        let unit = InputContract::of_dataset(&meta(Normalization::unit(3)));
        refused(InputContract { mean: vec![0.5, 0.0, 0.0], ..unit }, "normalize `unit` means mean 0 and std 1");
    }
}
