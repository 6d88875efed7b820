//! Opening and validating GGUF files (one file or a split `-0000N-of-0000M` set).
//!
//! candle's `gguf_file::Content` parses the header; this module adds what a user needs around it:
//! a missing, foreign or truncated file is reported as such before any tensor is read, metadata
//! is read by typed accessors with clear errors, and tensors of split files are found in
//! whichever part holds them (llama.cpp's `gguf-split` layout).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use crate::error::{candle_message, EngineError, Result};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// One part of a (possibly split) GGUF model.
struct Part {
    path: PathBuf,
    content: Content,
}

/// A GGUF model: the metadata of the first part and the tensors of all parts.
pub struct GgufModel {
    parts: Vec<Part>,
    /// Tensor name -> index of the part that holds it.
    tensor_part: HashMap<String, usize>,
}

impl GgufModel {
    /// Opens `paths` (the parts in order, usually one) and checks that every tensor they
    /// declare lies inside its file, so that truncation is reported now and not mid-load.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut parts = Vec::with_capacity(paths.len());
        let mut tensor_part = HashMap::new();
        for path in paths {
            let part = open_part(path)?;
            for name in part.content.tensor_infos.keys() {
                tensor_part.insert(name.clone(), parts.len());
            }
            parts.push(part);
        }
        if parts.is_empty() {
            return Err(EngineError::InvalidArgument("no model file given".into()));
        }
        Ok(Self { parts, tensor_part })
    }

    pub fn path(&self) -> &Path {
        &self.parts[0].path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.parts[0].content.metadata
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_part.contains_key(name)
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.tensor_part.keys()
    }

    /// Reads one tensor onto `device`, still quantized.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let idx = *self
            .tensor_part
            .get(name)
            .ok_or_else(|| EngineError::CorruptGguf {
                path: self.path().to_path_buf(),
                reason: format!("tensor '{name}' is missing"),
            })?;
        let part = &self.parts[idx];
        let mut reader = BufReader::new(File::open(&part.path)?);
        part.content
            .tensor(&mut reader, name, device)
            .map_err(|e| EngineError::CorruptGguf {
                path: part.path.clone(),
                reason: format!("tensor '{name}': {}", candle_message(&e)),
            })
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.metadata()
            .get(key)
            .ok_or_else(|| EngineError::MissingMetadata(key.to_string()))
    }

    fn typed<T>(&self, key: &str, f: impl Fn(&Value) -> candle_core::Result<T>) -> Result<T> {
        f(self.value(key)?).map_err(|e| EngineError::CorruptGguf {
            path: self.path().to_path_buf(),
            reason: format!("metadata '{key}': {}", candle_message(&e)),
        })
    }

    pub fn get_str(&self, key: &str) -> Result<String> {
        self.typed(key, |v| v.to_string().cloned())
    }

    pub fn get_opt_str(&self, key: &str) -> Option<String> {
        self.get_str(key).ok()
    }

    /// Any integer type, as GGUF writers differ in which they use for counts; a negative
    /// value is an error, not a wrapped huge count.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.typed(key, |v| {
            let x: i128 = match v {
                Value::U8(x) => *x as i128,
                Value::U16(x) => *x as i128,
                Value::U32(x) => *x as i128,
                Value::U64(x) => *x as i128,
                Value::I8(x) => *x as i128,
                Value::I16(x) => *x as i128,
                Value::I32(x) => *x as i128,
                Value::I64(x) => *x as i128,
                other => candle_core::bail!("expected an integer, found {:?}", other.value_type()),
            };
            usize::try_from(x).map_err(|_| candle_core::Error::Msg(format!("{x} is not a count")))
        })
    }

    pub fn get_opt_usize(&self, key: &str) -> Option<usize> {
        self.get_usize(key).ok()
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, |v| match v {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            other => candle_core::bail!("expected a float, found {:?}", other.value_type()),
        })
    }

    pub fn get_opt_bool(&self, key: &str) -> Option<bool> {
        self.typed(key, |v| v.to_bool()).ok()
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>> {
        self.typed(key, |v| {
            v.to_vec()?.iter().map(|x| x.to_string().cloned()).collect()
        })
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.typed(key, |v| v.to_vec()?.iter().map(|x| x.to_i32()).collect())
    }
}

fn open_part(path: &Path) -> Result<Part> {
    if !path.exists() {
        return Err(EngineError::ModelNotFound(path.to_path_buf()));
    }
    let not_gguf = |reason: String| EngineError::NotGguf {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() {
        return Err(not_gguf(format!("only {file_len} bytes long")));
    }
    if &magic != GGUF_MAGIC {
        return Err(not_gguf(format!(
            "starts with {magic:02x?}, not the GGUF magic"
        )));
    }
    // Bounds first: candle's parser allocates what the header says.
    crate::gguf_header::check(File::open(path)?, file_len).map_err(|reason| {
        EngineError::CorruptGguf {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    let mut reader = BufReader::new(File::open(path)?);
    let content = Content::read(&mut reader).map_err(|e| EngineError::CorruptGguf {
        path: path.to_path_buf(),
        reason: format!("header: {}", candle_message(&e)),
    })?;
    Ok(Part {
        path: path.to_path_buf(),
        content,
    })
}
