//! Whether an image file's bytes are whole. JPEG and PNG decoders fill the missing rows of
//! a file cut short without a word (a JPEG cut to half its bytes decodes, its lower half
//! made up), so prepare and predict ask the container first: a JPEG must reach its
//! end-of-image marker after its last scan, a PNG its `IEND` chunk. Other formats (BMP,
//! WebP) state their sizes in their headers, and their decoders refuse a short file.

use anyhow::{bail, Result};

const JPEG_SOI: [u8; 3] = [0xFF, 0xD8, 0xFF];
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// `Err` saying how the file is cut short when `bytes` are a JPEG or PNG that ends before
/// its container does; `Ok` for whole files and for other formats.
pub fn check_complete(bytes: &[u8]) -> Result<()> {
    if bytes.starts_with(&JPEG_SOI) {
        jpeg(bytes)
    } else if bytes.starts_with(&PNG_SIGNATURE) {
        png(bytes)
    } else {
        Ok(())
    }
}

fn short(kind: &str, what: &str, at: usize, len: usize) -> Result<()> {
    bail!(
        "the {kind} is cut short: {what} at byte {at} of {len}, so its end is missing (a decoder would make up the \
         missing rows); use the whole file"
    )
}

/// Walk the JPEG's segments (a marker, its length, its bytes; after a start-of-scan the
/// entropy-coded data up to the next marker) until the end-of-image marker.
fn jpeg(b: &[u8]) -> Result<()> {
    let mut at = 2;
    loop {
        // A marker: 0xFF (fill bytes of 0xFF may precede it), then its code.
        if at >= b.len() {
            return short("JPEG", "no end-of-image marker", at, b.len());
        }
        if b[at] != 0xFF {
            bail!("the JPEG is damaged: a segment marker was expected at byte {at} of {}", b.len());
        }
        while at < b.len() && b[at] == 0xFF {
            at += 1;
        }
        let Some(&code) = b.get(at) else {
            return short("JPEG", "no end-of-image marker", at, b.len());
        };
        at += 1;
        match code {
            0xD9 => return Ok(()),
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b.get(at..at + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
            return short("JPEG", "a segment's length", at, b.len());
        };
        if len < 2 || at + len > b.len() {
            return short("JPEG", &format!("a segment (marker 0x{code:02X}) of {len} bytes"), at, b.len());
        }
        at += len;
        if code == 0xDA {
            // Entropy-coded data: 0xFF is followed by 0x00 (a stuffed byte), a restart
            // marker or fill inside it; the next other marker ends it.
            loop {
                match b.get(at..at + 2) {
                    None => return short("JPEG", "a scan's data", at, b.len()),
                    Some([0xFF, next]) if *next != 0x00 && !(0xD0..=0xD7).contains(next) && *next != 0xFF => break,
                    Some(_) => at += 1,
                }
            }
        }
    }
}

/// Walk the PNG's chunks (length, type, data, CRC) until `IEND`.
fn png(b: &[u8]) -> Result<()> {
    let mut at = PNG_SIGNATURE.len();
    loop {
        let Some(head) = b.get(at..at + 8) else {
            return short("PNG", "no IEND chunk", at, b.len());
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let end = at.checked_add(12).and_then(|x| x.checked_add(len));
        if end.is_none_or(|e| e > b.len()) {
            let kind = String::from_utf8_lossy(&head[4..8]).into_owned();
            return short("PNG", &format!("a `{kind}` chunk of {len} bytes"), at, b.len());
        }
        if &head[4..8] == b"IEND" {
            return Ok(());
        }
        at = end.unwrap_or(b.len());
    }
}

#[cfg(test)]
mod tests {
    use crate::imagefile::check_complete;
    use crate::imagefile::PNG_SIGNATURE;

    /// A minimal JPEG's container: SOI, an APP0 segment, a scan whose data holds a stuffed
    /// 0xFF and a restart marker, EOI.
    fn jpeg_bytes() -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x06, b'J', b'F', b'I', b'F'];
        b.extend([0xFF, 0xDA, 0x00, 0x04, 0x01, 0x02]);
        b.extend([0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0x78]);
        b.extend([0xFF, 0xD9]);
        b
    }

    fn png_bytes() -> Vec<u8> {
        let mut b = PNG_SIGNATURE.to_vec();
        for (kind, data) in [(&b"IHDR"[..], &[0u8; 13][..]), (b"IDAT", &[1, 2, 3]), (b"IEND", &[])] {
            b.extend((data.len() as u32).to_be_bytes());
            b.extend(kind);
            b.extend(data);
            b.extend([0, 0, 0, 0]);
        }
        b
    }

    #[test]
    fn whole_files_pass_and_every_cut_is_refused() {
        // A cut inside the signature is not recognized as the format: its decoder refuses it.
        for (kind, whole, signature) in [("JPEG", jpeg_bytes(), 3), ("PNG", png_bytes(), 8)] {
            check_complete(&whole).unwrap_or_else(|e| panic!("{kind}: {e}"));
            // Bytes after the end (a camera's trailer) are allowed.
            check_complete(&[&whole[..], &[0, 1, 2]].concat()).unwrap_or_else(|e| panic!("{kind}: {e}"));
            for cut in signature..whole.len() {
                let e = check_complete(&whole[..cut]).map(|()| cut).unwrap_err();
                assert!(e.to_string().contains(&format!("the {kind} is cut short")), "{kind} cut at {cut}: {e}");
            }
        }
        // Other formats are their decoders' to judge.
        check_complete(b"BM\x00\x01").unwrap_or_else(|e| panic!("{e}"));
    }
}
