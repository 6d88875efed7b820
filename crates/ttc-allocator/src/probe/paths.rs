//! Where probe files live: the cache path `calibrate` writes a model's probe to and `auto`
//! looks in first, and the file-name-safe form of a model name that path (and the latency
//! profile's) is built from.

use std::path::PathBuf;

/// Where `calibrate` writes a model's probe, and where `auto` looks first.
pub fn default_path(model: &str) -> PathBuf {
    ttc_engine::download::cache_dir()
        .join("probes")
        .join(format!("{}.probe.safetensors", sanitize(model)))
}

/// `s` with every character but ASCII letters, digits, `.`, `-` and `_` replaced by `_`, so a
/// model name (which may hold a path or a colon) is one file name on every platform.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_become_one_file_name() {
        assert_eq!(sanitize("SmolLM2-135M.Q4_1.gguf"), "SmolLM2-135M.Q4_1.gguf");
        assert_eq!(sanitize("a/b:c d"), "a_b_c_d");
    }
}
