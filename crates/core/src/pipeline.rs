//! Pipeline files (`pipelines/*.toml`): the whole greedy run's settings, read with serde.
//! Unknown keys and invalid values are rejected with the key's name.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::config::TrainConfig;
use crate::dataset::Split;
use crate::run::Phase;

/// How the prepare stage builds the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `unit` (x/255, the tutorial's) or `standardize` (per-channel, train statistics).
    pub normalize: crate::config::Normalize,
    /// Fraction of training images held out (the LAST ones, like Keras' `validation_split`).
    pub val_fraction: f64,
    /// Use only the first N training images (before the split); 0 = all.
    pub limit_train: usize,
    /// Use only the first N test images; 0 = all.
    pub limit_test: usize,
    /// The dataset's folder or tarball (CIFAR-10, CIFAR-100, MNIST IDX files, a folder of
    /// images per class), relative to where the command runs; none: CIFAR-10, found or
    /// downloaded. `--source` overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<std::path::PathBuf>,
    /// CIFAR-100's labels: `fine` (100 classes) or `coarse` (20).
    #[serde(skip_serializing_if = "is_default")]
    pub labels: crate::config::Labels,
    /// An image folder's images resized to `WxH` (else they must all have one size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize: Option<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            normalize: crate::config::Normalize::Unit,
            val_fraction: 0.2,
            limit_train: 0,
            limit_test: 0,
            source: None,
            labels: crate::config::Labels::Fine,
            resize: None,
        }
    }
}

named_enum!(ModelKind, "model kind", { Mlp => "mlp", Cnn => "cnn" });

/// What a network is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Dense layers of `[train] width`/`widths` (the tutorial's).
    #[default]
    Mlp,
    /// Convolutional stages with auxiliary heads (Belilovsky et al. 2019): `stages`, `head_convs`.
    Cnn,
}

/// `[model]`: the network's kind, and a convolutional network's stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `mlp` or `cnn`.
    pub kind: ModelKind,
    /// `cnn`: the stages, e.g. `[{out = 64}, {out = 128, downsample = "maxpool"}]`; greedy
    /// depth d trains stage d.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<crate::cnn::StageSpec>,
    /// `cnn`: conv blocks in each stage's auxiliary head before its pooling (k − 1).
    #[serde(skip_serializing_if = "is_default")]
    pub head_convs: usize,
}

impl ModelConfig {
    /// The convolutional architecture, for `kind = "cnn"`.
    pub fn cnn(&self) -> Option<crate::cnn::CnnSpec> {
        (self.kind == ModelKind::Cnn)
            .then(|| crate::cnn::CnnSpec { stages: self.stages.clone(), head_convs: self.head_convs })
    }

    fn validate(&self, max_depth: usize) -> Result<()> {
        match self.cnn() {
            None if !self.stages.is_empty() || self.head_convs != 0 => {
                bail!("`model.stages` and `model.head_convs` describe a convolutional network: set `model.kind = \"cnn\"`")
            }
            None => Ok(()),
            Some(c) => {
                c.validate()?;
                if max_depth > c.stages.len() {
                    bail!(
                        "`greedy.max_depth` is {max_depth}, but `model.stages` lists {}: each greedy depth trains one \
                         stage, so list a stage per depth or lower `greedy.max_depth`",
                        crate::plural(c.stages.len(), "stage")
                    );
                }
                Ok(())
            }
        }
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
    /// `sequential` (the default: one depth after another) or `decoupled` (every stage at
    /// once, as `[decoupled]` says).
    #[serde(skip_serializing_if = "is_default")]
    pub schedule: crate::decoupled::Schedule,
}

impl Default for GreedyConfig {
    fn default() -> Self {
        Self { max_depth: 10, patience: 0, evaluate: Split::Test, schedule: Default::default() }
    }
}

/// Which greedy depths a stage after the loop covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Depths {
    /// The best greedy depth by validation accuracy.
    #[default]
    Best,
    /// Every greedy depth the loop trained.
    All,
}

named_enum!(Depths, "depths", { Best => "best", All => "all" });

/// `[finetune]` (fine-tune greedy depths end to end after the loop) or `[baseline]`
/// (train networks of the same depths end to end from scratch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StageConfig {
    /// `best` (the best greedy depth by validation accuracy) or `all`.
    pub depths: Depths,
    /// Epochs; default: `[train]`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Adam learning rate; default: `[train]`'s, divided by 10 for fine-tuning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

impl StageConfig {
    fn validate(&self, section: &str) -> Result<()> {
        if self.epochs == Some(0) {
            bail!("`{section}.epochs` must be at least 1");
        }
        if let Some(e) = self.epochs {
            crate::config::check_limit(&format!("{section}.epochs"), e, crate::config::MAX_EPOCHS)?;
        }
        if let Some(lr) = self.lr {
            if !(lr.is_finite() && lr > 0.0) {
                bail!("`{section}.lr` must be a positive number");
            }
        }
        Ok(())
    }
}

/// `[autoencoder]`: a second greedy loop over the same depths whose layers are pretrained
/// without labels (denoising autoencoders) and probed, beside the `[train]` loop: the
/// comparison of Bengio et al. (2007). Unset keys take `[train]`'s values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AutoencoderConfig {
    /// Pretraining epochs per depth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Adam learning rate (pretraining and probe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Masking-noise fraction, in [0, 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corruption: Option<f64>,
    /// `tied` or `untied`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoder: Option<crate::config::Decoder>,
    /// Epochs of each depth's probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_epochs: Option<usize>,
}

impl AutoencoderConfig {
    /// The training settings of the autoencoder loop: `train`'s, with this section's.
    pub fn config(&self, train: &TrainConfig) -> TrainConfig {
        let epochs = self.epochs.unwrap_or(train.epochs);
        TrainConfig {
            objective: crate::config::Objective::Autoencoder,
            epochs,
            lr: self.lr.unwrap_or(train.lr),
            corruption: self.corruption.unwrap_or(train.corruption),
            decoder: self.decoder.unwrap_or(train.decoder),
            probe_epochs: Some(self.probe_epochs.or(train.probe_epochs).unwrap_or(epochs)),
            ..train.clone()
        }
    }
}

/// How `--scheduler slurm` submits the plan's jobs (`[slurm]`). Every key is optional
/// and there are no site-specific defaults: without a partition, Slurm's default one is used.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// `sbatch --partition` for every job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// The partition of the jobs that use a GPU (train and evaluate with `--device cuda`);
    /// `partition` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_partition: Option<String>,
    /// `--cpus-per-task` of the prepare, train and evaluate jobs (the report job takes 1);
    /// 2 when unset. The stages use that many threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_per_task: Option<usize>,
    /// `sbatch --time` of every job (e.g. `"02:00:00"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `sbatch --mem` of every job (e.g. `"4G"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// Further `sbatch` options, one per entry, each starting with `--`
    /// (e.g. `["--account=lab", "--qos=short"]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sbatch_args: Vec<String>,
}

impl SlurmConfig {
    /// Check every value, naming the key of the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.cpus_per_task == Some(0) {
            bail!("`slurm.cpus_per_task` must be at least 1");
        }
        for (key, v) in [
            ("slurm.partition", &self.partition),
            ("slurm.gpu_partition", &self.gpu_partition),
            ("slurm.time", &self.time),
            ("slurm.mem", &self.mem),
        ] {
            if let Some(v) = v {
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:,+=".contains(c)) {
                    bail!("`{key}` is `{v}`: use letters, digits and - _ . : , + = only");
                }
            }
        }
        for a in &self.sbatch_args {
            if !a.starts_with("--") || a.contains(['\n', '\r']) {
                bail!(
                    "`slurm.sbatch_args` entry `{a}`: each entry is one sbatch option starting with `--`, on one line"
                );
            }
        }
        Ok(())
    }

    /// This configuration with `over`'s set values taking precedence (command-line flags
    /// over the pipeline's section); `over`'s sbatch options come after this one's.
    pub fn overridden_by(&self, over: &SlurmConfig) -> SlurmConfig {
        SlurmConfig {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            gpu_partition: over.gpu_partition.clone().or_else(|| self.gpu_partition.clone()),
            cpus_per_task: over.cpus_per_task.or(self.cpus_per_task),
            time: over.time.clone().or_else(|| self.time.clone()),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            sbatch_args: self.sbatch_args.iter().chain(&over.sbatch_args).cloned().collect(),
        }
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
    /// The network (an MLP unless told otherwise).
    #[serde(default, skip_serializing_if = "is_default")]
    pub model: ModelConfig,
    /// Training of each depth.
    #[serde(default)]
    pub train: TrainConfig,
    /// The loop.
    #[serde(default)]
    pub greedy: GreedyConfig,
    /// After the loop: fine-tune greedy depths end to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<StageConfig>,
    /// After the loop: the end-to-end baseline, networks of the same depths trained from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<StageConfig>,
    /// Beside the loop: the same depths pretrained as denoising autoencoders (and, with
    /// `[finetune]`, fine-tuned end to end too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoencoder: Option<AutoencoderConfig>,
    /// How a decoupled schedule runs (`greedy.schedule = "decoupled"`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub decoupled: crate::decoupled::DecoupledConfig,
    /// Cluster submission (`--scheduler slurm`); changes nothing a run computes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub slurm: SlurmConfig,
}

/// A TOML error as a person reads it: the key (`train.epochs`) and its line, then what is
/// wrong, with serde's type names ("expected usize") said in words.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let plain = e
        .message()
        .replace("expected usize", "expected a whole number (no sign, no fraction)")
        .replace("expected u64", "expected a whole number (no sign, no fraction)")
        .replace("expected u32", "expected a whole number (no sign, no fraction)")
        .replace("expected f64", "expected a number")
        .replace("expected a boolean", "expected true or false");
    let Some(span) = e.span() else { return plain };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    // The key is the line's text before `=`; its table, the last `[header]` above it.
    let key = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string());
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match key {
        Some(k) if !k.is_empty() && !k.starts_with('[') => {
            let full = table.map_or(k.clone(), |t| format!("{t}.{k}"));
            format!("`{full}` (line {line_no}: `{line}`): {plain}")
        }
        _ => format!("line {line_no} (`{line}`): {plain}"),
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Pipeline {
    /// Parse and validate TOML text; `origin` names the file in messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let p: Pipeline =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {}", describe_toml_error(text, &e)))?;
        p.validate().with_context(|| format!("{origin}: invalid pipeline"))?;
        Ok(p)
    }

    /// Read and validate a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsread::read_text_capped(path, "pipeline", crate::fsread::MAX_TEXT_BYTES)
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
        let f = self.data.val_fraction;
        if !(f > 0.0 && f < 1.0) {
            bail!("`data.val_fraction` is {f}: it must be strictly between 0 and 1");
        }
        if let Some(r) = &self.data.resize {
            crate::config::parse_size(r).context("`data.resize`")?;
        }
        if self.greedy.max_depth == 0 {
            bail!("`greedy.max_depth` must be at least 1");
        }
        self.model.validate(self.greedy.max_depth)?;
        if self.train.cnn.is_some() {
            bail!("`train.cnn` is derived from the `[model]` section: describe the network there");
        }
        self.stage_config(Phase::Greedy)
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}").context("in section [train]"))?;
        crate::config::check_limit("greedy.max_depth", self.greedy.max_depth, crate::config::MAX_DEPTH)?;
        if let Some(f) = &self.finetune {
            f.validate("finetune")?;
        }
        if let Some(b) = &self.baseline {
            b.validate("baseline")?;
        }
        if self.autoencoder.is_some() && self.train.objective == crate::config::Objective::Autoencoder {
            bail!(
                "`[autoencoder]` runs a second greedy loop of autoencoders beside the [train] loop, but \
                 `train.objective` is already \"autoencoder\": drop one of them"
            );
        }
        // Every later section's settings, as its stage will derive them, before the first
        // depth trains: a bad [finetune] must not wait for the greedy loop to finish.
        for stage in [Phase::Finetune, Phase::Baseline, Phase::Autoencoder] {
            if self.has_stage(stage) {
                let section = format!("in section [{}]", stage.section());
                self.stage_config(stage).validate().map_err(|e| anyhow::anyhow!("{e}").context(section))?;
            }
        }
        self.validate_schedule()?;
        self.slurm.validate()?;
        Ok(())
    }

    /// How the greedy loop's checkpoints name their schedule: none for sequential growing.
    pub fn schedule_name(&self) -> Option<String> {
        (self.greedy.schedule == crate::decoupled::Schedule::Decoupled).then(|| self.decoupled.schedule_name())
    }

    /// The greedy schedule and its `[decoupled]` section.
    fn validate_schedule(&self) -> Result<()> {
        use crate::decoupled::Schedule;
        if self.greedy.schedule == Schedule::Sequential {
            if self.decoupled != Default::default() {
                bail!(
                    "`[decoupled]` is set but `greedy.schedule` is \"sequential\": set `schedule = \"decoupled\"` \
                     under [greedy], or drop the section"
                );
            }
            return Ok(());
        }
        if self.model.kind != ModelKind::Cnn {
            bail!(
                "`greedy.schedule = \"decoupled\"` trains convolutional stages with auxiliary heads: set [model] \
                 kind = \"cnn\" (an MLP's depths train sequentially)"
            );
        }
        if self.greedy.patience > 0 {
            bail!(
                "`greedy.patience` stops a sequential loop early; a decoupled schedule trains every depth at once: \
                 drop `patience`"
            );
        }
        if self.autoencoder.is_some() {
            bail!("`[autoencoder]` pretrains an MLP's depths one after another; it has no decoupled schedule");
        }
        self.decoupled.validate(self.greedy.max_depth)
    }

    /// Whether this pipeline runs `stage`: the loop always; every other stage when its
    /// sections are there (the autoencoder loop's fine-tuning needs `[autoencoder]` and
    /// `[finetune]`).
    pub fn has_stage(&self, stage: Phase) -> bool {
        match stage {
            Phase::Greedy => true,
            Phase::Finetune => self.finetune.is_some(),
            Phase::Baseline => self.baseline.is_some(),
            Phase::Autoencoder => self.autoencoder.is_some(),
            Phase::AutoencoderFinetune => self.autoencoder.is_some() && self.finetune.is_some(),
        }
    }

    /// The training settings of `stage`'s runs: `[train]`'s; the autoencoder loop's with
    /// `[autoencoder]`'s; fine-tuning and the baseline with their section's epochs and
    /// learning rate (fine-tuning: a tenth of `[train]`'s by default), and always supervised.
    pub fn stage_config(&self, stage: Phase) -> TrainConfig {
        let t = TrainConfig { cnn: self.model.cnn(), ..self.train.clone() };
        let (section, lr_default) = match stage {
            Phase::Greedy => return t,
            Phase::Autoencoder => return self.autoencoder.clone().unwrap_or_default().config(&t),
            Phase::Finetune | Phase::AutoencoderFinetune => (self.finetune.clone(), t.lr / 10.0),
            Phase::Baseline => (self.baseline.clone(), t.lr),
        };
        let section = section.unwrap_or_default();
        // Fine-tuning and the baseline learn from the labels, whatever the loop's objective.
        TrainConfig {
            epochs: section.epochs.unwrap_or(t.epochs),
            lr: section.lr.unwrap_or(lr_default),
            objective: crate::config::Objective::Supervised,
            ..t
        }
    }

    /// Canonical TOML text of this pipeline (what a run records).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("cannot serialize pipeline")
    }
}

#[cfg(test)]
mod tests {
    use crate::pipeline::Depths;
    use crate::pipeline::Pipeline;
    use crate::pipeline::TrainConfig;

    #[test]
    fn a_bad_value_names_its_key_and_line_in_words() {
        let text = "name = \"x\"\n[train]\nepochs = -1\n";
        let err = format!("{:#}", Pipeline::from_toml(text, "p.toml").unwrap_err());
        assert!(err.starts_with("p.toml: `train.epochs` (line 3: `epochs = -1`)"), "{err}");
        assert!(err.contains("expected a whole number (no sign, no fraction)") && !err.contains("usize"), "{err}");
        let err =
            format!("{:#}", Pipeline::from_toml("name = \"x\"\n[greedy]\nmax_depth = \"ten\"\n", "p").unwrap_err());
        assert!(err.contains("`greedy.max_depth`"), "{err}");
        // A key that does not exist is named too.
        let err = format!("{:#}", Pipeline::from_toml("name = \"x\"\n[train]\nepoch = 3\n", "p").unwrap_err());
        assert!(err.contains("epoch"), "{err}");
    }

    #[test]
    fn each_variant_has_one_string_form() {
        crate::config::check_string_forms(Depths::VARIANTS);
    }

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
            ("name='x'\n[data]\nnormalize = 'zscore'", "normalize"),
            ("name='x'\n[greedy]\nmax_depth = 0", "greedy.max_depth"),
            ("name='x'\n[train]\nhead = 'thawed'", "head"),
            ("name='x'\n[train]\nlearning_rate = 0.1", "learning_rate"),
            ("name='x'\nextra = 1", "extra"),
            ("name='x'\n[train]\nbatch_size = 0", "batch_size"),
            ("name='x'\n[slurm]\ncpus_per_task = 0", "slurm.cpus_per_task"),
            ("name='x'\n[slurm]\npartition = 'a b'", "slurm.partition"),
            ("name='x'\n[slurm]\nsbatch_args = ['-A x']", "slurm.sbatch_args"),
            ("name='x'\n[slurm]\nqueue = 'gpu'", "queue"),
            ("name='x'\n[finetune]\nepochs = 0", "finetune.epochs"),
            ("name='x'\n[baseline]\nlr = -1", "baseline.lr"),
            ("name='x'\n[baseline]\ndepths = 'some'", "depths"),
            ("name='x'\n[autoencoder]\ncorruption = 1.0", "corruption"),
            ("name='x'\n[autoencoder]\ndecoder = 'tide'", "decoder"),
            ("name='x'\n[autoencoder]\nnoise = 0.1", "noise"),
            ("name='x'\n[train]\nobjective = 'autoencoder'\n[autoencoder]", "autoencoder"),
            ("name='x'\n[train]\nobjective = 'unsupervised'", "objective"),
        ] {
            let e = err(text);
            assert!(e.contains(key), "error for {text:?} should name {key}: {e}");
        }
    }

    #[test]
    fn every_count_of_every_section_is_refused_above_its_limit() {
        let huge = "1000000000000";
        for (text, key) in [
            ("[train]\nepochs = N", "epochs"),
            ("[train]\nprobe_epochs = N", "probe_epochs"),
            ("[train]\nwarmup_epochs = N", "warmup_epochs"),
            ("[train]\nbatch_size = N", "batch_size"),
            ("[train]\nwidth = N", "width"),
            ("[greedy]\nmax_depth = N", "greedy.max_depth"),
            ("[finetune]\nepochs = N", "finetune.epochs"),
            ("[baseline]\nepochs = N", "baseline.epochs"),
            ("[autoencoder]\nepochs = N", "epochs"),
            ("[autoencoder]\nprobe_epochs = N", "probe_epochs"),
        ] {
            let e = err(&format!("name='x'\n{}", text.replace('N', huge)));
            assert!(e.contains(&format!("`{key}`")) && e.contains("above the limit"), "{text}: {e}");
        }
        // A later section whose derived settings cannot train is refused at load, before
        // the first depth: [train]'s warm-up longer than [finetune]'s epochs.
        let e = err("name='x'\n[train]\nwarmup_epochs = 5\nlr_schedule = 'cosine'\n[finetune]\nepochs = 3");
        assert!(e.contains("[finetune]") && e.contains("warmup_epochs"), "{e}");
        // `epochs = 0` names `epochs`, not a key the user never set.
        assert!(err("name='x'\n[train]\nepochs = 0").contains("`epochs`: must be at least 1"));
    }

    #[test]
    fn round_trips_through_toml() {
        let p = Pipeline::from_toml(
            "name='x'\n[greedy]\npatience = 2\n[slurm]\npartition = 'gpu'\nsbatch_args = ['--qos=short']",
            "p.toml",
        )
        .unwrap();
        assert_eq!(p.slurm.partition.as_deref(), Some("gpu"));
        let back = Pipeline::from_toml(&p.to_toml().unwrap(), "again").unwrap();
        assert_eq!(p, back);
    }
}
