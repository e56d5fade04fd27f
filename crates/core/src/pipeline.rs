//! Pipeline files (`pipelines/*.toml`): the whole greedy run's settings, read with serde.
//! Unknown keys and invalid values are rejected with the key's name.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::config::TrainConfig;
use crate::dataset::Split;

/// How the prepare stage builds the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `unit` (x/255, the tutorial's) or `standardize` (per-channel, train statistics).
    pub normalize: String,
    /// Fraction of training images held out (the LAST ones, like Keras' `validation_split`).
    pub val_fraction: f64,
    /// Use only the first N training images (before the split); 0 = all.
    pub limit_train: usize,
    /// Use only the first N test images; 0 = all.
    pub limit_test: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { normalize: "unit".into(), val_fraction: 0.2, limit_train: 0, limit_test: 0 }
    }
}

/// The greedy loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreedyConfig {
    /// Deepest network to train.
    pub max_depth: usize,
    /// Stop when validation accuracy has not improved for this many depths; 0 = never stop early.
    pub patience: usize,
    /// Split evaluated after each depth.
    pub evaluate: Split,
}

impl Default for GreedyConfig {
    fn default() -> Self {
        Self { max_depth: 10, patience: 0, evaluate: Split::Test }
    }
}

/// A pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Name; the default run folder is `artifacts/runs/<name>`.
    pub name: String,
    /// One line saying what this pipeline is for.
    #[serde(default)]
    pub description: String,
    /// Published results to show beside this run's: `keras-tutorial` or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Dataset preparation.
    #[serde(default)]
    pub data: DataConfig,
    /// Training of each depth.
    #[serde(default)]
    pub train: TrainConfig,
    /// The loop.
    #[serde(default)]
    pub greedy: GreedyConfig,
}

impl Pipeline {
    /// Parse and validate TOML text; `origin` names the file in messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let p: Pipeline = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        p.validate().with_context(|| format!("{origin}: invalid pipeline"))?;
        Ok(p)
    }

    /// Read and validate a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read pipeline {}: does the file exist?", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Check every value, naming the key of the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("`name` must be non-empty letters, digits, '-' or '_' (it names the run folder)");
        }
        if let Some(r) = &self.reference {
            if r != "keras-tutorial" {
                bail!("`reference` is `{r}`: the only published reference known is `keras-tutorial`");
            }
        }
        if !matches!(self.data.normalize.as_str(), "unit" | "standardize") {
            bail!("`data.normalize` is `{}`: use `unit` or `standardize`", self.data.normalize);
        }
        let f = self.data.val_fraction;
        if !(f > 0.0 && f < 1.0) {
            bail!("`data.val_fraction` is {f}: it must be strictly between 0 and 1");
        }
        self.train.validate().map_err(|e| anyhow::anyhow!("{e}").context("in section [train]"))?;
        if self.greedy.max_depth == 0 {
            bail!("`greedy.max_depth` must be at least 1");
        }
        Ok(())
    }

    /// Canonical TOML text of this pipeline (what a run records).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("cannot serialize pipeline")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Pipeline::from_toml(text, "p.toml").unwrap_err())
    }

    #[test]
    fn defaults_are_the_tutorial() {
        let p = Pipeline::from_toml("name = \"x\"", "p.toml").unwrap();
        assert_eq!(p.train, TrainConfig::default());
        assert_eq!(p.train.batch_size, 250);
        assert_eq!(p.data.val_fraction, 0.2);
        assert_eq!(p.greedy.max_depth, 10);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("name='x'\n[train]\nepochs = 0", "epochs"),
            ("name='x'\n[train]\nlr = -0.1", "lr"),
            ("name='x'\n[data]\nval_fraction = 1.0", "data.val_fraction"),
            ("name='x'\n[data]\nval_fraction = 0", "data.val_fraction"),
            ("name='x'\n[data]\nnormalize = 'zscore'", "data.normalize"),
            ("name='x'\n[greedy]\nmax_depth = 0", "greedy.max_depth"),
            ("name='x'\n[train]\nhead = 'thawed'", "head"),
            ("name='x'\n[train]\nlearning_rate = 0.1", "learning_rate"),
            ("name='x'\nextra = 1", "extra"),
            ("name='x'\n[train]\nbatch_size = 0", "batch_size"),
        ] {
            let e = err(text);
            assert!(e.contains(key), "error for {text:?} should name {key}: {e}");
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let p = Pipeline::from_toml("name='x'\n[greedy]\npatience = 2", "p.toml").unwrap();
        let back = Pipeline::from_toml(&p.to_toml().unwrap(), "again").unwrap();
        assert_eq!(p, back);
    }
}
