//! The prepared dataset: one safetensors file with three splits, written by the prepare
//! stage and read (memory-mapped) by training and evaluation.
//!
//! Tensors: `{train,val,test}.images` (f32 `[N, C*H*W]`, CHW order) and
//! `{train,val,test}.labels` (u8 `[N]`). Metadata: [`DatasetMeta`].

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;

use crate::st::{write_safetensors, MappedSafetensors, OutTensor};

/// Floats normalized at a time while a dataset is written (whole images: at least one).
const CHUNK_VALUES: usize = 1 << 20;

/// Values a chunk of the dataset writer takes for images of `dim` values (whole images,
/// about [`CHUNK_VALUES`], at least one image), and what it reserves for them: never more
/// than the `largest` split holds (256 images of 4096 × 4096 once asked for 51 GB).
fn chunk_values(dim: usize, largest: usize) -> (usize, usize) {
    let per_chunk = dim.max(1) * (CHUNK_VALUES / dim.max(1)).max(1);
    (per_chunk, per_chunk.min(largest))
}

/// `layerwise.format` of a prepared dataset.
pub const DATASET_FORMAT: &str = "layerwise-dataset";
/// Version of [`DatasetMeta`].
pub const DATASET_VERSION: u32 = 1;

/// The three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images (the first part of the official training set).
    Train,
    /// Validation images (the last `val_fraction` of the official training set).
    Val,
    /// The official test set.
    Test,
}

impl Split {
    /// All splits, in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    /// `train`, `val` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => bail!("unknown split `{s}`: use train, val or test"),
        }
    }
}

/// How pixels were mapped to floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// `unit` (x/255) or `standardize` ((x/255 - mean[c]) / std[c], train split statistics).
    pub kind: crate::config::Normalize,
    /// Per-channel mean subtracted after /255 (zeros for `unit`).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by (ones for `unit`).
    pub std: Vec<f64>,
}

impl Normalization {
    /// x / 255, for images of `channels` channels.
    pub fn unit(channels: usize) -> Self {
        Self { kind: crate::config::Normalize::Unit, mean: vec![0.0; channels], std: vec![1.0; channels] }
    }
}

/// A source file the dataset was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Name inside the source (e.g. `data_batch_1.bin`).
    pub name: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

/// Everything a prepared dataset says about itself (the `meta` of the `layerwise` metadata key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    /// Always [`DATASET_VERSION`] when written by this version.
    pub version: u32,
    /// Dataset name, e.g. `cifar-10`.
    pub name: String,
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// `[channels, height, width]`.
    pub image_shape: [usize; 3],
    /// Pixel normalization.
    pub normalization: Normalization,
    /// Fraction of the training images held out for validation.
    pub val_fraction: f64,
    /// Images per split: train, val, test.
    pub split_sizes: SplitSizes,
    /// Where the source came from (`binary-folder`, `python-tarball`, ...).
    pub source_kind: String,
    /// Source files and their hashes.
    pub sources: Vec<SourceFile>,
    /// Hex SHA-256 over every tensor's bytes (in file order) and the normalization:
    /// the identity that checkpoints and metrics refer to.
    pub fingerprint: String,
}

/// Images per split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSizes {
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// Test images.
    pub test: usize,
}

impl SplitSizes {
    /// Size of one split.
    pub fn get(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train,
            Split::Val => self.val,
            Split::Test => self.test,
        }
    }
}

impl DatasetMeta {
    /// Values per image (C*H*W).
    pub fn input_size(&self) -> usize {
        self.image_shape.iter().product()
    }
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
}

/// One split held in memory, ready to be written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitData {
    /// `[n * input_size]` floats.
    pub images: Vec<f32>,
    /// `[n]` labels.
    pub labels: Vec<u8>,
}

/// Fingerprint of a dataset's content: SHA-256 over the normalization and each split's
/// images and labels, so two files with the same numbers share a fingerprint.
pub fn fingerprint(norm: &Normalization, splits: [&SplitData; 3]) -> String {
    fingerprint_of(norm, splits.map(|s| (&s.images[..], &s.labels[..])))
}

/// [`fingerprint`] over borrowed `(images, labels)` of the three splits.
fn fingerprint_of(norm: &Normalization, splits: [(&[f32], &[u8]); 3]) -> String {
    let mut f = Fingerprint::new(norm);
    for (images, labels) in splits {
        f.split(labels.len());
        f.images(images);
        f.labels(labels);
    }
    f.finish()
}

/// The fingerprint, computed incrementally: the normalization, then each split in order:
/// its row count, its images (the stored little-endian floats, in any number of pieces),
/// its labels.
struct Fingerprint(sha2::Sha256);

impl Fingerprint {
    fn new(norm: &Normalization) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(serde_json::to_string(norm).unwrap_or_default().as_bytes());
        Self(h)
    }

    fn split(&mut self, rows: usize) {
        sha2::Digest::update(&mut self.0, (rows as u64).to_le_bytes());
    }

    fn images(&mut self, values: &[f32]) {
        sha2::Digest::update(&mut self.0, crate::st::f32_le_bytes(values));
    }

    fn labels(&mut self, labels: &[u8]) {
        sha2::Digest::update(&mut self.0, labels);
    }

    fn finish(self) -> String {
        hex::encode(sha2::Digest::finalize(self.0))
    }
}

impl DatasetMeta {
    /// Describe CIFAR-shaped (3×32×32) splits: sizes and fingerprint are computed here.
    pub fn describe(
        name: &str,
        classes: Vec<String>,
        normalization: Normalization,
        val_fraction: f64,
        source_kind: &str,
        sources: Vec<SourceFile>,
        splits: [&SplitData; 3],
    ) -> Self {
        let [train, val, test] = splits;
        let sizes = SplitSizes { train: train.labels.len(), val: val.labels.len(), test: test.labels.len() };
        let fingerprint = fingerprint(&normalization, splits);
        Self {
            fingerprint,
            ..Self::describe_sizes(name, [3, 32, 32], classes, normalization, val_fraction, source_kind, sources, sizes)
        }
    }

    /// Describe CIFAR-shaped splits of these sizes, the fingerprint left empty (for
    /// [`write_dataset_streamed`], which computes it while writing).
    #[allow(clippy::too_many_arguments)] // each is a field the metadata records
    pub fn describe_sizes(
        name: &str,
        image_shape: [usize; 3],
        classes: Vec<String>,
        normalization: Normalization,
        val_fraction: f64,
        source_kind: &str,
        sources: Vec<SourceFile>,
        split_sizes: SplitSizes,
    ) -> Self {
        Self {
            version: DATASET_VERSION,
            name: name.into(),
            classes,
            image_shape,
            fingerprint: String::new(),
            normalization,
            val_fraction,
            split_sizes,
            source_kind: source_kind.into(),
            sources,
        }
    }
}

/// A split as a source holds it: one byte (0-255) per value, CHW images one after another,
/// and the labels.
#[derive(Clone, Copy)]
pub struct ByteSplit<'a> {
    /// `[n * 3072]` bytes.
    pub images: &'a [u8],
    /// `[n]` labels.
    pub labels: &'a [u8],
}

impl Normalization {
    /// Whole images of bytes into the floats a dataset stores, appended to `out`: x/255,
    /// or (x/255 - mean[c]) / std[c] for the image's channel c.
    pub fn apply(&self, images: &[u8], image_shape: [usize; 3], out: &mut Vec<f32>) {
        let plane = image_shape[1] * image_shape[2];
        if self.kind == crate::config::Normalize::Unit {
            out.extend(images.iter().map(|&b| b as f32 / 255.0));
            return;
        }
        let size = plane * image_shape[0];
        for img in images.chunks_exact(size) {
            for (c, values) in img.chunks_exact(plane).enumerate() {
                let (m, s) = (self.mean[c], self.std[c]);
                out.extend(values.iter().map(|&b| ((b as f64 / 255.0 - m) / s) as f32));
            }
        }
    }
}

/// Write a dataset straight from its bytes, normalizing while writing: the floats are
/// never all in memory, and the fingerprint is computed on a second core while the file
/// is written (its header holds a placeholder until then, patched before the file is
/// renamed into place). The bytes written are those of [`write_dataset`] for the same
/// floats. `meta`'s fingerprint is replaced; the described metadata is returned.
pub fn write_dataset_streamed(path: &Path, mut meta: DatasetMeta, splits: [ByteSplit<'_>; 3]) -> Result<DatasetMeta> {
    use crate::st::{header_for, TensorSlot};
    use safetensors::tensor::Dtype;
    use std::io::{Seek, SeekFrom, Write};
    let dim = meta.input_size();
    let shape = meta.image_shape;
    for (split, data) in Split::ALL.iter().zip(&splits) {
        let n = data.labels.len();
        if n != meta.split_sizes.get(*split) || data.images.len() != n * dim {
            bail!(
                "internal: split {split} holds {n} labels and {} bytes, metadata says {n} images of {dim}",
                data.images.len()
            );
        }
    }
    const PLACEHOLDER: &str = "fingerprint-being-computed-fingerprint-being-computed-0123456789";
    meta.fingerprint = PLACEHOLDER.into();
    let mut slots = Vec::new();
    for (split, data) in Split::ALL.iter().zip(&splits) {
        let n = data.labels.len();
        slots.push(TensorSlot {
            name: format!("{split}.images"),
            dtype: Dtype::F32,
            shape: vec![n, dim],
            bytes: 4 * n * dim,
        });
        slots.push(TensorSlot { name: format!("{split}.labels"), dtype: Dtype::U8, shape: vec![n], bytes: n });
    }
    let (header, order) = header_for(DATASET_FORMAT, &meta, &slots)?;
    let at = header
        .windows(PLACEHOLDER.len())
        .position(|w| w == PLACEHOLDER.as_bytes())
        .ok_or_else(|| anyhow::anyhow!("internal: the fingerprint placeholder is not in the header"))?;
    let largest = splits.iter().map(|s| s.images.len()).max().unwrap_or(0);
    let (per_chunk, reserve) = chunk_values(dim, largest);
    let floats = |images: &[u8], each: &mut dyn FnMut(&[f32]) -> Result<()>| -> Result<()> {
        let mut buf = Vec::with_capacity(reserve);
        for chunk in images.chunks(per_chunk) {
            buf.clear();
            meta.normalization.apply(chunk, shape, &mut buf);
            each(&buf)?;
        }
        Ok(())
    };
    let mut fingerprint = String::new();
    crate::atomic::write_atomic_with(path, |tmp| {
        let file = std::fs::File::create(tmp)
            .with_context(|| format!("cannot create {}: is the folder writable?", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, file);
        std::thread::scope(|scope| -> Result<()> {
            // The fingerprint, on a second core.
            let hasher = scope.spawn(|| -> Result<String> {
                let mut f = Fingerprint::new(&meta.normalization);
                for data in &splits {
                    f.split(data.labels.len());
                    floats(data.images, &mut |v| {
                        f.images(v);
                        Ok(())
                    })?;
                    f.labels(data.labels);
                }
                Ok(f.finish())
            });
            w.write_all(&header)?;
            for &i in &order {
                let data = &splits[i / 2];
                if i % 2 == 0 {
                    floats(data.images, &mut |v| Ok(w.write_all(&crate::st::f32_le_bytes(v))?))?;
                } else {
                    w.write_all(data.labels)?;
                }
            }
            fingerprint = hasher.join().map_err(|_| anyhow::anyhow!("internal: the fingerprint thread panicked"))??;
            Ok(())
        })?;
        if fingerprint.len() != PLACEHOLDER.len() {
            bail!("internal: a fingerprint of {} characters", fingerprint.len());
        }
        let mut file = w.into_inner().map_err(|e| anyhow::anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
        file.seek(SeekFrom::Start(at as u64))?;
        file.write_all(fingerprint.as_bytes())?;
        Ok(())
    })
    .with_context(|| format!("cannot write {}: is the folder writable and the disk not full?", path.display()))?;
    meta.fingerprint = fingerprint;
    Ok(meta)
}

/// Write a prepared dataset atomically. `meta.split_sizes` must match the data.
pub fn write_dataset(path: &Path, meta: &DatasetMeta, splits: [&SplitData; 3]) -> Result<()> {
    let dim = meta.input_size();
    let mut tensors = Vec::new();
    for (split, data) in Split::ALL.iter().zip(splits) {
        let n = data.labels.len();
        if n != meta.split_sizes.get(*split) || data.images.len() != n * dim {
            bail!(
                "internal: split {split} holds {n} labels and {} floats, metadata says {} images of {dim}",
                data.images.len(),
                meta.split_sizes.get(*split)
            );
        }
        tensors.push(OutTensor::F32(format!("{split}.images"), vec![n, dim], &data.images));
        tensors.push(OutTensor::U8(format!("{split}.labels"), vec![n], &data.labels));
    }
    write_safetensors(path, DATASET_FORMAT, meta, tensors)
}

/// A prepared dataset, memory-mapped.
pub struct Dataset {
    file: MappedSafetensors,
    /// Its metadata.
    pub meta: DatasetMeta,
}

/// One split of an opened dataset.
pub struct SplitView<'a> {
    /// `[n * input_size]` floats (borrowed from the map when possible).
    pub images: Cow<'a, [f32]>,
    /// `[n]` labels.
    pub labels: &'a [u8],
}

impl SplitView<'_> {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

impl Dataset {
    /// Open and check a prepared dataset.
    pub fn open(path: &Path) -> Result<Self> {
        let file = MappedSafetensors::open(path, DATASET_FORMAT, "dataset")?;
        let meta: DatasetMeta = file.meta()?;
        if meta.version != DATASET_VERSION {
            bail!(
                "{}: dataset format version {} is not supported (this layerwise reads version {DATASET_VERSION}); \
                 prepare the dataset again with this version",
                path.display(),
                meta.version
            );
        }
        let ds = Self { file, meta };
        // Check every tensor's shape, and every value's finiteness, up front: a dataset
        // that opens is usable (one NaN pixel would otherwise train to NaN weights).
        let dim = ds.meta.input_size();
        for split in Split::ALL {
            let view = ds.split(split)?;
            if let Some(i) = view.images.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}: {split} image {} holds {} at value {}: the file is corrupt; prepare the dataset again \
                     (layerwise-prepare --verify checks a dataset file)",
                    path.display(),
                    i / dim.max(1),
                    view.images[i],
                    i % dim.max(1)
                );
            }
        }
        Ok(ds)
    }

    /// The file it was opened from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Recompute the content fingerprint and compare it with the recorded one: catches a
    /// changed value that opening (shapes, finiteness, labels) cannot.
    pub fn verify(&self) -> Result<()> {
        let views = [self.split(Split::Train)?, self.split(Split::Val)?, self.split(Split::Test)?];
        let found = fingerprint_of(&self.meta.normalization, views.each_ref().map(|v| (&v.images[..], v.labels)));
        if found != self.meta.fingerprint {
            bail!(
                "{}: its contents do not match its recorded fingerprint ({} recorded, {} found): the file was changed \
                 or damaged after it was written; prepare it again",
                self.path().display(),
                &self.meta.fingerprint[..12.min(self.meta.fingerprint.len())],
                &found[..12]
            );
        }
        Ok(())
    }

    /// One split, checked against the metadata.
    pub fn split(&self, split: Split) -> Result<SplitView<'_>> {
        let n = self.meta.split_sizes.get(split);
        let images = self.file.f32s(&format!("{split}.images"), &[n, self.meta.input_size()])?;
        let labels = self.file.u8s(&format!("{split}.labels"), &[n])?;
        let classes = self.meta.num_classes();
        if let Some(i) = labels.iter().position(|&l| l as usize >= classes) {
            bail!("{}: {split} label {i} is {}, but there are {classes} classes", self.path().display(), labels[i]);
        }
        Ok(SplitView { images, labels })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_writer_reserves_by_the_images_there_are() {
        let big = 3 * 4096 * 4096;
        // Six 4096 × 4096 images: one image a chunk, never 256 (51 GB).
        assert_eq!(chunk_values(big, 6 * big), (big, big));
        assert_eq!(chunk_values(3072, 10 * 3072), (341 * 3072, 10 * 3072));
        assert_eq!(chunk_values(3072, 1 << 30), (341 * 3072, 341 * 3072));
        assert_eq!(chunk_values(0, 0), (CHUNK_VALUES, 0));
    }
    use crate::dataset::chunk_values;
    use crate::dataset::write_dataset;
    use crate::dataset::write_dataset_streamed;
    use crate::dataset::ByteSplit;
    use crate::dataset::Dataset;
    use crate::dataset::DatasetMeta;
    use crate::dataset::Normalization;
    use crate::dataset::SplitData;
    use crate::dataset::CHUNK_VALUES;

    #[test]
    fn the_streamed_writer_writes_the_bytes_of_the_in_memory_one() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 3 * 32 * 32;
        let bytes =
            |n: usize, seed: usize| -> Vec<u8> { (0..n * dim).map(|i| ((i * 131 + seed * 7) % 256) as u8).collect() };
        let (tr, va, te) = (bytes(5, 1), bytes(3, 2), bytes(2, 3));
        let (ltr, lva, lte) = (vec![1u8, 2, 3, 4, 5], vec![0u8, 9, 8], vec![7u8, 6]);
        let standardize = Normalization {
            kind: crate::config::Normalize::Standardize,
            mean: vec![0.4, 0.5, 0.6],
            std: vec![0.2, 0.25, 0.3],
        };
        for norm in [Normalization::unit(3), standardize] {
            let floats = |b: &[u8]| {
                let mut v = Vec::new();
                norm.apply(b, [3, 32, 32], &mut v);
                v
            };
            let split = |b: &[u8], l: &[u8]| SplitData { images: floats(b), labels: l.to_vec() };
            let (a, b, c) = (split(&tr, &ltr), split(&va, &lva), split(&te, &lte));
            let meta =
                DatasetMeta::describe("t", vec!["x".into(); 10], norm.clone(), 0.4, "synthetic", vec![], [&a, &b, &c]);
            let old = dir.path().join("old.safetensors");
            write_dataset(&old, &meta, [&a, &b, &c]).unwrap();
            let new = dir.path().join("new.safetensors");
            let base = DatasetMeta::describe_sizes(
                "t",
                [3, 32, 32],
                vec!["x".into(); 10],
                norm.clone(),
                0.4,
                "synthetic",
                vec![],
                meta.split_sizes,
            );
            let splits = [
                ByteSplit { images: &tr, labels: &ltr },
                ByteSplit { images: &va, labels: &lva },
                ByteSplit { images: &te, labels: &lte },
            ];
            let written = write_dataset_streamed(&new, base, splits).unwrap();
            assert_eq!(written, meta, "{:?}", norm.kind);
            assert!(std::fs::read(&old).unwrap() == std::fs::read(&new).unwrap(), "{:?}: same bytes", norm.kind);
            Dataset::open(&new).unwrap().verify().unwrap();
        }
    }
}
