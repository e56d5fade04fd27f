//! A bound on what a pickle builds, checked before `serde-pickle` runs: its decoder and
//! the values it returns recurse once per level of nesting, so a crafted pickle nested
//! 20,000 lists deep would overflow the stack. Walking the opcodes without building
//! anything, we count the containers a pickle creates; nesting (after resolving shared
//! references, which serde-pickle refuses to follow in a cycle) can be no deeper than that.

use anyhow::{bail, Result};

/// Containers (lists, tuples, dicts, sets, objects) a CIFAR-10 pickle needs: a batch has
/// a dict, two lists and a numpy array of a few tuples and objects. Far above that, far
/// below what would exhaust a thread's stack.
pub const MAX_CONTAINERS: usize = 1000;

/// Count the containers `bytes` would create, or say why it is not a pickle.
pub fn containers(bytes: &[u8]) -> Result<usize> {
    let mut i = 0;
    let mut count = 0usize;
    let take = |i: &mut usize, n: usize| -> Result<usize> {
        let start = *i;
        let end = start.checked_add(n).filter(|&e| e <= bytes.len());
        match end {
            Some(e) => {
                *i = e;
                Ok(start)
            }
            None => bail!("the pickle ends inside an opcode's argument (truncated)"),
        }
    };
    let len_le = |i: &mut usize, width: usize| -> Result<usize> {
        let s = take(i, width)?;
        let mut v: u64 = 0;
        for (k, b) in bytes[s..s + width].iter().enumerate() {
            v |= (*b as u64) << (8 * k);
        }
        usize::try_from(v).map_err(|_| anyhow::anyhow!("a length of {v} bytes: not a pickle this machine can hold"))
    };
    let line = |i: &mut usize| -> Result<()> {
        match bytes[*i..].iter().position(|&b| b == b'\n') {
            Some(p) => {
                *i += p + 1;
                Ok(())
            }
            None => bail!("the pickle ends inside a text argument (truncated)"),
        }
    };
    while i < bytes.len() {
        let op = bytes[i];
        i += 1;
        match op {
            b'.' => return Ok(count), // STOP
            // Containers and objects.
            b']' | b'}' | b')' | b'l' | b't' | b'd' | 0x85 | 0x86 | 0x87 | 0x8f | 0x91 | b'R' | b'o' | 0x81 | 0x92
            | b'b' => count += 1,
            b'i' => {
                // INST: module and name lines, builds an object
                line(&mut i)?;
                line(&mut i)?;
                count += 1;
            }
            // No argument.
            b'(' | b'0' | b'1' | b'2' | b'N' | b'a' | b'e' | b's' | b'u' | 0x88 | 0x89 | 0x90 | 0x93 | 0x94 | 0x97
            | 0x98 | b'Q' => {}
            // Text arguments up to a newline.
            b'I' | b'L' | b'S' | b'V' | b'F' | b'P' | b'g' | b'p' => line(&mut i)?,
            b'c' => {
                line(&mut i)?;
                line(&mut i)?;
            }
            // Fixed-size arguments.
            b'K' | b'h' | b'q' | 0x80 | 0x82 => {
                take(&mut i, 1)?;
            }
            b'M' | 0x83 => {
                take(&mut i, 2)?;
            }
            b'J' | b'j' | b'r' | 0x84 => {
                take(&mut i, 4)?;
            }
            b'G' | 0x95 => {
                take(&mut i, 8)?;
            }
            // Length-prefixed arguments.
            b'U' | b'C' | 0x8a | 0x8c => {
                let n = len_le(&mut i, 1)?;
                take(&mut i, n)?;
            }
            b'T' | b'X' | b'B' | 0x8b => {
                let n = len_le(&mut i, 4)?;
                take(&mut i, n)?;
            }
            0x8d | 0x8e | 0x96 => {
                let n = len_le(&mut i, 8)?;
                take(&mut i, n)?;
            }
            other => bail!("byte {other:#04x} at offset {} is no pickle opcode", i - 1),
        }
        if count > MAX_CONTAINERS {
            bail!(
                "it builds more than {MAX_CONTAINERS} containers (a CIFAR-10 batch builds a few dozen): \
                 refusing a pickle that could nest deeper than this program's stack"
            );
        }
    }
    bail!("the pickle has no STOP opcode (truncated)")
}

#[cfg(test)]
mod tests {
    use crate::pickle_scan::containers;

    #[test]
    fn deep_nesting_is_refused_and_small_pickles_counted() {
        // [[[...]]] 20,000 deep, protocol 2: PROTO 2, then `]` 20,000 times, `a` 19,999 times, STOP.
        let mut deep = vec![0x80, 2];
        deep.extend(std::iter::repeat_n(b']', 20_000));
        deep.extend(std::iter::repeat_n(b'a', 19_999));
        deep.push(b'.');
        assert!(format!("{:#}", containers(&deep).unwrap_err()).contains("containers"));
        // {'a': [1, 2]} in protocol 2.
        let small = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02es.";
        assert_eq!(containers(small).unwrap(), 2);
        assert!(containers(&small[..10]).is_err(), "truncated");
        assert!(containers(b"\xff.").is_err(), "not an opcode");
        assert!(containers(b"X\xff\xff\xff\xff").is_err(), "a length past the end");
    }
}
