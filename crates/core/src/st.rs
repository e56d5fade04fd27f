//! Thin layer over `safetensors`: memory-mapped reading with checked names, dtypes and
//! shapes, and atomic writing with the `layerwise.*` metadata every artifact carries.
//!
//! Every layerwise safetensors file has two metadata keys: `layerwise.format` (what the
//! file is, e.g. `layerwise-dataset`) and `layerwise.meta` (a JSON document whose schema
//! depends on the format and carries its own `version`).

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::atomic::write_atomic_with;

/// Metadata key naming the kind of artifact.
pub const FORMAT_KEY: &str = "layerwise.format";
/// Metadata key holding the artifact's JSON description.
pub const META_KEY: &str = "layerwise.meta";

/// A memory-mapped safetensors file whose header has been checked.
pub struct MappedSafetensors {
    path: PathBuf,
    mmap: memmap2::Mmap,
    /// The `layerwise.meta` JSON text.
    pub meta_json: String,
}

impl MappedSafetensors {
    /// Map `path` and check it is a layerwise file of `format`.
    /// `what` names the expected artifact in messages ("dataset", "checkpoint").
    pub fn open(path: &Path, format: &str, what: &str) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open {what} {}: does the file exist?", path.display()))?;
        // SAFETY: the file is opened read-only; layerwise only ever replaces artifacts by
        // rename, so a mapped file's bytes are never modified while mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot map {what} {}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            anyhow!(
                "{} is not a valid safetensors file ({e}); expected a layerwise {what}: \
                 was it truncated or is it another kind of file?",
                path.display()
            )
        })?;
        let md = header.metadata().clone().unwrap_or_default();
        let found = md.get(FORMAT_KEY).cloned();
        if found.as_deref() != Some(format) {
            bail!(
                "{} is not a layerwise {what}: its metadata key `{FORMAT_KEY}` is {}, expected `{format}`",
                path.display(),
                found.map(|f| format!("`{f}`")).unwrap_or_else(|| "missing".into())
            );
        }
        let meta_json = md.get(META_KEY).cloned().ok_or_else(|| {
            anyhow!("{} has no `{META_KEY}` metadata: it was not written by layerwise", path.display())
        })?;
        // Validate offsets now so later tensor lookups cannot fail on a corrupt body.
        SafeTensors::deserialize(&mmap).map_err(|e| {
            anyhow!("{} is corrupt or truncated ({e}); regenerate it", path.display())
        })?;
        Ok(Self { path: path.to_path_buf(), mmap, meta_json })
    }

    /// The file this was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parse the `layerwise.meta` JSON.
    pub fn meta<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.meta_json).with_context(|| {
            format!("{}: metadata `{META_KEY}` does not match this version of layerwise", self.path.display())
        })
    }

    fn view(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<TensorView<'_>> {
        let st = SafeTensors::deserialize(&self.mmap)
            .map_err(|e| anyhow!("{} is corrupt ({e})", self.path.display()))?;
        let view = st.tensor(name).map_err(|_| {
            let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
            names.sort();
            anyhow!("{}: tensor `{name}` is missing (found: {})", self.path.display(), names.join(", "))
        })?;
        if view.dtype() != dtype || view.shape() != shape {
            bail!(
                "{}: tensor `{name}` is {:?} {:?}, expected {:?} {:?}",
                self.path.display(),
                view.dtype(),
                view.shape(),
                dtype,
                shape
            );
        }
        Ok(view)
    }

    /// An f32 tensor of exactly `shape`, borrowed from the map when aligned.
    pub fn f32s(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [f32]>> {
        let view = self.view(name, Dtype::F32, shape)?;
        let bytes = view.data();
        if cfg!(target_endian = "little") {
            if let Ok(s) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
                return Ok(Cow::Borrowed(s));
            }
        }
        Ok(Cow::Owned(
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        ))
    }

    /// A u8 tensor of exactly `shape`.
    pub fn u8s(&self, name: &str, shape: &[usize]) -> Result<&[u8]> {
        Ok(self.view(name, Dtype::U8, shape)?.data())
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> Vec<String> {
        SafeTensors::deserialize(&self.mmap)
            .map(|st| st.names().into_iter().map(String::from).collect())
            .unwrap_or_default()
    }
}

/// A tensor to write: name, shape, and data.
pub enum OutTensor<'a> {
    /// 32-bit floats.
    F32(String, Vec<usize>, &'a [f32]),
    /// Bytes.
    U8(String, Vec<usize>, &'a [u8]),
}

/// Write tensors with layerwise metadata, atomically.
pub fn write_safetensors(
    path: &Path,
    format: &str,
    meta: &impl serde::Serialize,
    tensors: Vec<OutTensor<'_>>,
) -> Result<()> {
    let mut md = HashMap::new();
    md.insert(FORMAT_KEY.to_string(), format.to_string());
    md.insert(META_KEY.to_string(), serde_json::to_string(meta).context("cannot serialize metadata")?);
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let (name, view) = match t {
            OutTensor::F32(name, shape, data) => {
                let bytes: Cow<[u8]> = if cfg!(target_endian = "little") {
                    Cow::Borrowed(bytemuck::cast_slice(data))
                } else {
                    Cow::Owned(data.iter().flat_map(|v| v.to_le_bytes()).collect())
                };
                (name, (Dtype::F32, shape, bytes))
            }
            OutTensor::U8(name, shape, data) => (name, (Dtype::U8, shape, Cow::Borrowed(data))),
        };
        views.push((name, view));
    }
    let views: Vec<(String, TensorView<'_>)> = views
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            TensorView::new(*dtype, shape.clone(), bytes.as_ref())
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow!("tensor `{name}`: {e}"))
        })
        .collect::<Result<_>>()?;
    write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(views, Some(md), tmp)
            .map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))
    })
    .with_context(|| format!("cannot write {}: is the folder writable?", path.display()))
}
