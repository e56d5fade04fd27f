//! The official Python releases' pickles (CIFAR-10 and CIFAR-100): a batch's `data` (a
//! numpy uint8 array) and labels, and a meta file's class names. What a pickle builds is
//! bounded first ([`crate::pickle_scan`]).

use anyhow::{anyhow, bail, Result};
use layerwise_core::cifar10::IMAGE_BYTES;

fn load_pickle(bytes: &[u8], origin: &str) -> Result<serde_pickle::Value> {
    crate::pickle_scan::containers(bytes).map_err(|e| anyhow!("{origin}: not a CIFAR-10 Python pickle: {e:#}"))?;
    serde_pickle::value_from_slice(bytes, serde_pickle::DeOptions::new().replace_unresolved_globals())
        .map_err(|e| anyhow!("{origin}: not a CIFAR-10 Python pickle ({e})"))
}

fn dict_get<'a>(v: &'a serde_pickle::Value, key: &str) -> Option<&'a serde_pickle::Value> {
    use serde_pickle::{HashableValue as H, Value as V};
    let V::Dict(map) = v else { return None };
    map.iter().find_map(|(k, val)| match k {
        H::Bytes(b) if b == key.as_bytes() => Some(val),
        H::String(s) if s == key => Some(val),
        _ => None,
    })
}

/// Find the raw array bytes and shape inside a numpy array's pickled state tuple
/// `(1, shape, dtype, is_fortran, raw_bytes)`.
fn numpy_bytes(v: &serde_pickle::Value) -> Option<(Vec<i64>, &[u8])> {
    use serde_pickle::Value as V;
    let V::Tuple(state) = v else { return None };
    let shape = state.iter().find_map(|x| match x {
        V::Tuple(dims) if !dims.is_empty() && dims.iter().all(|d| matches!(d, V::I64(_))) => {
            Some(dims.iter().filter_map(|d| if let V::I64(n) = d { Some(*n) } else { None }).collect::<Vec<_>>())
        }
        _ => None,
    })?;
    let data = state.iter().find_map(|x| match x {
        V::Bytes(b) => Some(b.as_slice()),
        _ => None,
    })?;
    Some((shape, data))
}

/// Read one Python-release batch: `data` (uint8 `[n, 3072]`) and `labels` (list of ints).
pub fn parse_pickle(bytes: &[u8], origin: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    parse_pickle_with(bytes, "labels", origin)
}

/// [`parse_pickle`] with the labels under `key` (CIFAR-100: `fine_labels`, `coarse_labels`).
pub fn parse_pickle_with(bytes: &[u8], key: &str, origin: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    use serde_pickle::Value as V;
    let root = load_pickle(bytes, origin)?;
    let labels_v =
        dict_get(&root, key).ok_or_else(|| anyhow!("{origin}: pickle has no `{key}` key: not a CIFAR batch"))?;
    let V::List(list) = labels_v else { bail!("{origin}: `{key}` is not a list") };
    let labels = list
        .iter()
        .enumerate()
        .map(|(i, l)| match l {
            V::I64(x) if (0..=255).contains(x) => Ok(*x as u8),
            other => Err(anyhow!("{origin}: label {i} is {other:?}, expected an integer 0-9")),
        })
        .collect::<Result<Vec<u8>>>()?;
    let data_v =
        dict_get(&root, "data").ok_or_else(|| anyhow!("{origin}: pickle has no `data` key: not a CIFAR-10 batch"))?;
    let (shape, data) = numpy_bytes(data_v).ok_or_else(|| anyhow!("{origin}: `data` is not a pickled numpy array"))?;
    let n = labels.len();
    if shape != [n as i64, IMAGE_BYTES as i64] || data.len() != n * IMAGE_BYTES {
        bail!(
            "{origin}: `data` has shape {shape:?} and {} bytes, expected [{n}, {IMAGE_BYTES}] uint8 ({} bytes)",
            data.len(),
            n * IMAGE_BYTES
        );
    }
    Ok((data.to_vec(), labels))
}

/// CIFAR-10's 10 class names from its `batches.meta` pickle.
pub fn parse_meta_pickle(bytes: &[u8], origin: &str) -> Result<Vec<String>> {
    pickle_names(bytes, "label_names", 10, origin)
}

/// The `n` class names a release's meta pickle holds under `key`.
pub fn pickle_names(bytes: &[u8], key: &str, n: usize, origin: &str) -> Result<Vec<String>> {
    use serde_pickle::Value as V;
    let root = load_pickle(bytes, origin)?;
    let Some(V::List(list)) = dict_get(&root, key) else {
        bail!("{origin}: no `{key}` list: not the release's meta file")
    };
    let names: Vec<String> = list
        .iter()
        .filter_map(|v| match v {
            V::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            V::String(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    if names.len() != n {
        bail!("{origin}: expected {n} class names, found {}", names.len());
    }
    Ok(names)
}
