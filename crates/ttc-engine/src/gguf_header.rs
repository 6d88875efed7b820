//! A bounds-checked walk over a GGUF header, before candle's parser reads it.
//!
//! A model file is untrusted input. candle's `gguf_file::Content::read` trusts the header's
//! counts and lengths (it allocates what they say and divides by `general.alignment`), which is
//! the class of bug behind llama.cpp's GGUF CVEs (CVE-2024-21802, -21836, -23496,
//! CVE-2025-53630). This walk reads the same header with every length checked against the
//! bytes left in the file and against [`limits`], every tensor's size computed with checked
//! arithmetic and checked to lie inside the file, and the alignment checked to be a power of
//! two, so that what reaches candle is a header whose allocations are bounded by the file's
//! own size.
//!
//! Reference: the GGUF specification (ggml `docs/gguf.md`), read, not copied.

use std::io::{BufReader, Read, Seek, SeekFrom};

use candle_core::quantized::GgmlDType;

/// Bounds on a header that no real model file reaches.
pub mod limits {
    /// Tensors in one file (a 405B model in one file has about 1,100).
    pub const MAX_TENSORS: u64 = 1 << 16;
    /// Metadata entries (real files have tens).
    pub const MAX_METADATA: u64 = 1 << 16;
    /// One key's length.
    pub const MAX_KEY: u64 = 1 << 16;
    /// One string value (a chat template is a few KiB; 16 MiB is plenty).
    pub const MAX_STRING: u64 = 1 << 24;
    /// Elements of one array value (vocabularies have up to a few hundred thousand tokens).
    pub const MAX_ARRAY: u64 = 1 << 22;
    /// Dimensions of one tensor (GGML has 4).
    pub const MAX_DIMS: u32 = 4;
    /// Elements of one tensor (2^40: far beyond any matrix of a real model).
    pub const MAX_ELEMENTS: u64 = 1 << 40;
}

/// What is wrong with a header: the reason, for `EngineError::CorruptGguf`.
pub type Invalid = String;

struct Walker<R> {
    r: R,
    /// Bytes of the file not read yet.
    left: u64,
}

impl<R: Read> Walker<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, Invalid> {
        if n > self.left {
            return Err(format!(
                "{what} needs {n} bytes, {} are left in the file",
                self.left
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| format!("{what}: {e}"))?;
        self.left -= n;
        Ok(buf)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), Invalid> {
        if n > self.left {
            return Err(format!(
                "{what} needs {n} bytes, {} are left in the file",
                self.left
            ));
        }
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| format!("{what}: {e}"))?;
        if copied != n {
            return Err(format!("{what}: the file ends early"));
        }
        self.left -= n;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, Invalid> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Invalid> {
        let b = self.bytes(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A count: u32 in GGUF version 1, u64 after.
    fn count(&mut self, version: u32, what: &str) -> Result<u64, Invalid> {
        if version == 1 {
            self.u32(what).map(u64::from)
        } else {
            self.u64(what)
        }
    }

    fn string(&mut self, version: u32, max: u64, what: &str) -> Result<Vec<u8>, Invalid> {
        let len = self.count(version, what)?;
        if len > max {
            return Err(format!("{what} is {len} bytes long (at most {max})"));
        }
        self.bytes(len, what)
    }

    fn skip_string(&mut self, version: u32, what: &str) -> Result<(), Invalid> {
        let len = self.count(version, what)?;
        if len > limits::MAX_STRING {
            return Err(format!(
                "{what} is {len} bytes long (at most {})",
                limits::MAX_STRING
            ));
        }
        self.skip(len, what)
    }

    /// Skips one value of type `ty`; returns it when it is a u32 (for `general.alignment`).
    fn value(
        &mut self,
        version: u32,
        ty: u32,
        what: &str,
        depth: u32,
    ) -> Result<Option<u64>, Invalid> {
        match ty {
            0 | 1 | 7 => self.skip(1, what).map(|_| None),
            2 | 3 => self.skip(2, what).map(|_| None),
            4 | 5 => {
                let v = self.u32(what)?;
                Ok((ty == 4).then_some(u64::from(v)))
            }
            6 => self.skip(4, what).map(|_| None),
            10 => self.u64(what).map(Some),
            11 | 12 => self.skip(8, what).map(|_| None),
            8 => self.skip_string(version, what).map(|_| None),
            9 => {
                if depth > 0 {
                    return Err(format!("{what}: an array of arrays"));
                }
                let elem = self.u32(what)?;
                let n = self.count(version, what)?;
                if n > limits::MAX_ARRAY {
                    return Err(format!(
                        "{what} has {n} elements (at most {})",
                        limits::MAX_ARRAY
                    ));
                }
                match fixed_size(elem) {
                    Some(size) => self.skip(n * size, what)?,
                    None if elem == 8 => {
                        for _ in 0..n {
                            self.skip_string(version, what)?;
                        }
                    }
                    None => return Err(format!("{what}: array of unknown type {elem}")),
                }
                Ok(None)
            }
            other => Err(format!("{what} has unknown value type {other}")),
        }
    }
}

/// GGML's tensor type ids, as GGUF stores them (ggml.h `ggml_type`), for the types candle reads.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The size of a fixed-size GGUF value type.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Walks the header of the file behind `r` (whose length is `file_len`), positioned at its
/// start. Ok when candle may parse it: every allocation it makes is then bounded by the file.
pub fn check<R: Read + Seek>(r: R, file_len: u64) -> Result<(), Invalid> {
    let mut w = Walker {
        r: BufReader::new(r),
        left: file_len,
    };
    w.r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let magic = w.bytes(4, "the magic")?;
    if magic != b"GGUF" {
        return Err("not a GGUF file".into());
    }
    let version = w.u32("the version")?;
    if !(1..=3).contains(&version) {
        return Err(format!("GGUF version {version} (ttc reads 1 to 3)"));
    }
    let tensors = w.count(version, "the tensor count")?;
    let entries = w.count(version, "the metadata count")?;
    if tensors > limits::MAX_TENSORS || entries > limits::MAX_METADATA {
        return Err(format!(
            "{tensors} tensors and {entries} metadata entries (at most {} and {})",
            limits::MAX_TENSORS,
            limits::MAX_METADATA
        ));
    }
    let mut alignment = 32u64;
    for i in 0..entries {
        let key = w.string(version, limits::MAX_KEY, &format!("metadata key {i}"))?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let ty = w.u32(&format!("metadata '{key}'"))?;
        let v = w.value(version, ty, &format!("metadata '{key}'"), 0)?;
        if key == "general.alignment" {
            alignment = v.ok_or("metadata 'general.alignment' must be an unsigned integer")?;
            if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 20 {
                return Err(format!(
                    "metadata 'general.alignment' is {alignment} (a power of two up to 2^20 expected)"
                ));
            }
        }
    }
    let mut extents = Vec::with_capacity(tensors as usize);
    for i in 0..tensors {
        let name = w.string(version, limits::MAX_KEY, &format!("tensor {i}'s name"))?;
        let name = String::from_utf8_lossy(&name).into_owned();
        let what = format!("tensor '{name}'");
        let n_dims = w.u32(&what)?;
        if n_dims == 0 || n_dims > limits::MAX_DIMS {
            return Err(format!("{what} has {n_dims} dimensions (1 to 4)"));
        }
        let mut elems: u64 = 1;
        for _ in 0..n_dims {
            let d = w.count(version, &what)?;
            if d == 0 {
                return Err(format!("{what} has a dimension of 0"));
            }
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= limits::MAX_ELEMENTS)
                .ok_or_else(|| format!("{what} has more than 2^40 elements"))?;
        }
        let ty = w.u32(&what)?;
        let dtype = ggml_dtype(ty).ok_or_else(|| format!("{what} has unknown type {ty}"))?;
        let (block, type_size) = (dtype.block_size() as u64, dtype.type_size() as u64);
        if !elems.is_multiple_of(block) {
            return Err(format!(
                "{what}: {elems} elements are not whole {dtype:?} blocks of {block}"
            ));
        }
        let bytes = (elems / block)
            .checked_mul(type_size)
            .ok_or_else(|| format!("{what} is too large"))?;
        let offset = w.u64(&what)?;
        if offset % alignment != 0 {
            return Err(format!(
                "{what}'s offset {offset} is not aligned to {alignment}"
            ));
        }
        extents.push((what, offset, bytes));
    }
    // The tensor data starts at the next multiple of the alignment; every tensor ends in it.
    let header_end = file_len - w.left;
    let data_start = header_end.div_ceil(alignment) * alignment;
    for (what, offset, bytes) in extents {
        let end = data_start
            .checked_add(offset)
            .and_then(|x| x.checked_add(bytes));
        match end {
            Some(end) if end <= file_len => {}
            Some(end) => {
                return Err(format!(
                "{what} ends past the file's {file_len} bytes, at byte {end} (truncated download?)"
            ))
            }
            None => return Err(format!("{what} ends past the file's {file_len} bytes")),
        }
    }
    Ok(())
}
