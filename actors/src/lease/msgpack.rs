//! Hand-written MessagePack for hot paths: the smallest encodings of strings, unsigned
//! integers, map and array headers and booleans, byte for byte as `rmp_serde` writes them, so a
//! reply or a stored segment can splice bytes encoded earlier instead of serializing again.

/// A string.
pub(crate) fn str(b: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        b.push(0xa0 | n as u8);
    } else if n < 256 {
        b.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65_536 {
        b.push(0xda);
        b.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        b.push(0xdb);
        b.extend_from_slice(&(n as u32).to_be_bytes());
    }
    b.extend_from_slice(s.as_bytes());
}

/// An unsigned integer.
pub(crate) fn uint(b: &mut Vec<u8>, v: u64) {
    if v < 128 {
        b.push(v as u8);
    } else if v < 256 {
        b.extend_from_slice(&[0xcc, v as u8]);
    } else if v < 65_536 {
        b.push(0xcd);
        b.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v < (1 << 32) {
        b.push(0xce);
        b.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        b.push(0xcf);
        b.extend_from_slice(&v.to_be_bytes());
    }
}

/// A map header of `n` entries.
pub(crate) fn map(b: &mut Vec<u8>, n: usize) {
    if n < 16 {
        b.push(0x80 | n as u8);
    } else if n < 65_536 {
        b.push(0xde);
        b.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        b.push(0xdf);
        b.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// An array header of `n` items.
pub(crate) fn array(b: &mut Vec<u8>, n: usize) {
    if n < 16 {
        b.push(0x90 | n as u8);
    } else if n < 65_536 {
        b.push(0xdc);
        b.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        b.push(0xdd);
        b.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// A boolean.
pub(crate) fn bool(b: &mut Vec<u8>, v: bool) {
    b.push(if v { 0xc3 } else { 0xc2 });
}
