//! Thin layer over `safetensors`: memory-mapped reading with checked names, dtypes and
//! shapes, and atomic writing with the `layerwise.*` metadata every artifact carries.
//!
//! Every layerwise safetensors file has one metadata key, `layerwise`, holding the JSON
//! `{"format": "...", "meta": {...}}`: `format` says what the file is (e.g.
//! `layerwise-dataset`), `meta` is a document whose schema depends on the format and
//! carries its own `version`. (One key, because safetensors writes its metadata map in
//! hash order: with one key, identical content gives identical bytes.)

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The metadata key of every layerwise artifact.
pub const LAYERWISE_KEY: &str = "layerwise";

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope<M> {
    format: String,
    meta: M,
}

/// A memory-mapped safetensors file whose header has been checked.
pub struct MappedSafetensors {
    path: PathBuf,
    mmap: memmap2::Mmap,
    meta: serde_json::Value,
    /// The other metadata keys (`layerwise.stages`, ...), as stored.
    keys: HashMap<String, String>,
}

impl MappedSafetensors {
    /// Map `path` and check it is a layerwise file of `format`.
    /// `what` names the expected artifact in messages ("dataset", "checkpoint").
    pub fn open(path: &Path, format: &str, what: &str) -> Result<Self> {
        if path.is_dir() {
            bail!(
                "{} is a folder, but a layerwise {what} is one .safetensors file: give the file's path",
                path.display()
            );
        }
        let file = crate::fsread::open_regular(path, what)
            .with_context(|| format!("cannot use {what} {}: does the file exist?", path.display()))?;
        // SAFETY: the file is opened read-only; layerwise only ever replaces artifacts by
        // rename, so a mapped file's bytes are never modified while mapped.
        let mmap =
            unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {what} {}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            anyhow!(
                "{} is not a valid safetensors file ({e}); expected a layerwise {what}: \
                 was it truncated or is it another kind of file?",
                path.display()
            )
        })?;
        let md = header.metadata().clone().unwrap_or_default();
        let Some(text) = md.get(LAYERWISE_KEY) else {
            bail!(
                "{} is not a layerwise {what}: it has no `{LAYERWISE_KEY}` metadata (it was not written by layerwise)",
                path.display()
            );
        };
        let envelope: Envelope<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| anyhow!("{}: the `{LAYERWISE_KEY}` metadata is damaged ({e})", path.display()))?;
        if envelope.format != format {
            bail!(
                "{} is not a layerwise {what}: it is a `{}` file, expected `{format}`",
                path.display(),
                envelope.format
            );
        }
        // Validate offsets now so later tensor lookups cannot fail on a corrupt body.
        SafeTensors::deserialize(&mmap)
            .map_err(|e| anyhow!("{} is corrupt or truncated ({e}); regenerate it", path.display()))?;
        let keys = md.into_iter().filter(|(k, _)| k != LAYERWISE_KEY).collect();
        Ok(Self { path: path.to_path_buf(), mmap, meta: envelope.meta, keys })
    }

    /// The file this was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parse the format's metadata document.
    pub fn meta<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.meta).with_context(|| {
            format!("{}: its `{LAYERWISE_KEY}` metadata does not match this version of layerwise", self.path.display())
        })
    }

    /// A metadata key besides `layerwise` (a convolutional checkpoint's
    /// `layerwise.stages`, say), as stored.
    pub fn key(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    fn view(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<TensorView<'_>> {
        let st =
            SafeTensors::deserialize(&self.mmap).map_err(|e| anyhow!("{} is corrupt ({e})", self.path.display()))?;
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
        Ok(Cow::Owned(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
    }

    /// A u8 tensor of exactly `shape`.
    pub fn u8s(&self, name: &str, shape: &[usize]) -> Result<&[u8]> {
        Ok(self.view(name, Dtype::U8, shape)?.data())
    }

    /// A tensor's bytes as stored, whatever its dtype and shape (to compare tensors bit
    /// for bit).
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let st =
            SafeTensors::deserialize(&self.mmap).map_err(|e| anyhow!("{} is corrupt ({e})", self.path.display()))?;
        let view = st.tensor(name).map_err(|_| anyhow!("{}: tensor `{name}` is missing", self.path.display()))?;
        let range = view.data().as_ptr() as usize - self.mmap.as_ptr() as usize;
        Ok(&self.mmap[range..range + view.data().len()])
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

/// Floats as the files store them: little-endian bytes (borrowed where the machine is
/// little-endian).
pub(crate) fn f32_le_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// A tensor's name, dtype, shape and little-endian bytes, ready to serialize.
type PreparedTensor<'a> = (String, (Dtype, Vec<usize>, Cow<'a, [u8]>));

fn prepare_views<'a>(
    format: &str,
    meta: &impl serde::Serialize,
    tensors: Vec<OutTensor<'a>>,
) -> Result<(HashMap<String, String>, Vec<PreparedTensor<'a>>)> {
    let envelope = Envelope { format: format.to_string(), meta };
    let md = HashMap::from([(
        LAYERWISE_KEY.to_string(),
        serde_json::to_string(&envelope).context("cannot serialize metadata")?,
    )]);
    let views = tensors
        .into_iter()
        .map(|t| match t {
            OutTensor::F32(name, shape, data) => (name, (Dtype::F32, shape, f32_le_bytes(data))),
            OutTensor::U8(name, shape, data) => (name, (Dtype::U8, shape, Cow::Borrowed(data))),
        })
        .collect();
    Ok((md, views))
}

type Prepared<'a> = [PreparedTensor<'a>];

fn tensor_views<'b>(views: &'b Prepared<'_>) -> Result<Vec<(String, TensorView<'b>)>> {
    views
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            TensorView::new(*dtype, shape.clone(), bytes.as_ref())
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow!("tensor `{name}`: {e}"))
        })
        .collect()
}

/// Serialize tensors with layerwise metadata into memory (for small artifacts whose hash
/// is needed before they are written).
pub fn safetensors_bytes(format: &str, meta: &impl serde::Serialize, tensors: Vec<OutTensor<'_>>) -> Result<Vec<u8>> {
    let (md, views) = prepare_views(format, meta, tensors)?;
    safetensors::serialize(tensor_views(&views)?, Some(md)).map_err(|e| anyhow!("cannot serialize tensors: {e}"))
}

/// [`safetensors_bytes`] with metadata keys besides `layerwise` (`(key, JSON text)`).
/// The header is written with its keys sorted, so identical content gives identical bytes
/// whatever the keys (safetensors itself writes its metadata map in hash order).
pub fn safetensors_bytes_with_keys(
    format: &str,
    meta: &impl serde::Serialize,
    keys: &[(String, String)],
    tensors: Vec<OutTensor<'_>>,
) -> Result<Vec<u8>> {
    let (mut md, views) = prepare_views(format, meta, tensors)?;
    for (k, v) in keys {
        if k == LAYERWISE_KEY || md.insert(k.clone(), v.clone()).is_some() {
            bail!("internal: metadata key `{k}` given twice");
        }
    }
    let slots = slots_of(&views);
    let (infos, order) = tensor_infos(&slots);
    let header =
        safetensors::tensor::Metadata::new(Some(md), infos).map_err(|e| anyhow!("cannot describe the tensors: {e}"))?;
    // Through a `Value`, whose maps are sorted by key.
    let value = serde_json::to_value(&header).context("cannot serialize the safetensors header")?;
    let mut header = serde_json::to_string(&value).context("cannot serialize the safetensors header")?.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    for &i in &order {
        out.extend_from_slice(&views[i].1 .2);
    }
    Ok(out)
}

/// The slot of each prepared tensor.
fn slots_of(views: &Prepared<'_>) -> Vec<TensorSlot> {
    views
        .iter()
        .map(|(name, (dtype, shape, bytes))| TensorSlot {
            name: name.clone(),
            dtype: *dtype,
            shape: shape.clone(),
            bytes: bytes.len(),
        })
        .collect()
}

/// Each slot's entry in the header, in the order the data follows (safetensors' own: by
/// descending dtype alignment, then by name), and that order as indices into `slots`.
fn tensor_infos(slots: &[TensorSlot]) -> (Vec<(String, safetensors::tensor::TensorInfo)>, Vec<usize>) {
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by(|&l, &r| slots[r].dtype.cmp(&slots[l].dtype).then(slots[l].name.cmp(&slots[r].name)));
    let mut offset = 0;
    let mut infos = Vec::with_capacity(slots.len());
    for &i in &order {
        let s = &slots[i];
        let info = safetensors::tensor::TensorInfo {
            dtype: s.dtype,
            shape: s.shape.clone(),
            data_offsets: (offset, offset + s.bytes),
        };
        offset += s.bytes;
        infos.push((s.name.clone(), info));
    }
    (infos, order)
}

/// A tensor's place in a file about to be written: its name, dtype, shape and byte length.
pub struct TensorSlot {
    /// Name.
    pub name: String,
    /// Data type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub bytes: usize,
}

/// The start of a safetensors file holding `slots` with layerwise metadata: the 8-byte
/// header length and the padded header, and the order the tensors' data must follow
/// (safetensors' own: by descending dtype alignment, then by name), as indices into `slots`.
pub fn header_for(format: &str, meta: &impl serde::Serialize, slots: &[TensorSlot]) -> Result<(Vec<u8>, Vec<usize>)> {
    let envelope = Envelope { format: format.to_string(), meta };
    let md = HashMap::from([(
        LAYERWISE_KEY.to_string(),
        serde_json::to_string(&envelope).context("cannot serialize metadata")?,
    )]);
    let (infos, order) = tensor_infos(slots);
    let header =
        safetensors::tensor::Metadata::new(Some(md), infos).map_err(|e| anyhow!("cannot describe the tensors: {e}"))?;
    let mut header = serde_json::to_string(&header).context("cannot serialize the safetensors header")?.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    Ok((out, order))
}

/// Write tensors with layerwise metadata, atomically, streaming to the file.
pub fn write_safetensors(
    path: &Path,
    format: &str,
    meta: &impl serde::Serialize,
    tensors: Vec<OutTensor<'_>>,
) -> Result<()> {
    let (_, views) = prepare_views(format, meta, tensors)?;
    let slots = slots_of(&views);
    let (header, order) = header_for(format, meta, &slots)
        .with_context(|| format!("cannot describe the tensors of {}", path.display()))?;
    // Streamed through the project's own atomic writer (no second temp file of
    // safetensors' own, which a killed writer would leave behind).
    crate::atomic::write_atomic(path, |w| {
        w.write_all(&header)?;
        for &i in &order {
            w.write_all(&views[i].1 .2)?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot write {}: is the folder writable and the disk not full?", path.display()))
}

#[cfg(test)]
mod tests {
    use crate::st::safetensors_bytes;
    use crate::st::write_safetensors;
    use crate::st::MappedSafetensors;
    use crate::st::OutTensor;

    #[test]
    fn the_streamed_file_is_what_safetensors_serializes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let (a, b, c) = (vec![1.5f32, -2.0, 3.25], vec![7u8, 8], vec![0.5f32; 6]);
        let tensors = || {
            vec![
                OutTensor::U8("labels".into(), vec![2], &b[..]),
                OutTensor::F32("z.images".into(), vec![2, 3], &c[..]),
                OutTensor::F32("a.images".into(), vec![3], &a[..]),
            ]
        };
        write_safetensors(&path, "layerwise-test", &serde_json::json!({"v": 1}), tensors()).unwrap();
        let expected = safetensors_bytes("layerwise-test", &serde_json::json!({"v": 1}), tensors()).unwrap();
        assert!(std::fs::read(&path).unwrap() == expected, "same bytes as safetensors::serialize");
        // Readable with the checked reader, and with the mode of every other artifact.
        let st = MappedSafetensors::open(&path, "layerwise-test", "test file").unwrap();
        assert_eq!(st.f32s("z.images", &[2, 3]).unwrap().as_ref(), &c[..]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let other = dir.path().join("other");
        std::fs::write(&other, b"").unwrap();
        assert_eq!(mode, std::fs::metadata(&other).unwrap().permissions().mode() & 0o777);
        // A folder is named as one.
        let err = format!("{:#}", MappedSafetensors::open(dir.path(), "layerwise-test", "dataset").err().unwrap());
        assert!(err.contains("is a folder"), "{err}");
    }
}
