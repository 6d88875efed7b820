//! Where a decoder's weights come from. Tensors are named as in GGUF (`blk.0.attn_q.weight`);
//! a Hugging Face safetensors checkpoint (the reward models are published that way) is read
//! through a map from those names to its own (`model.layers.0.self_attn.q_proj.weight`),
//! with its `config.json` as the hyper-parameters.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{candle_message, EngineError, Result};
use crate::gguf::GgufModel;
use crate::models::{Architecture, ModelConfig, RopeLayout};

pub trait WeightSource {
    fn has_tensor(&self, name: &str) -> bool;
    /// The tensor `name` (GGUF naming) on `device`, quantized or not.
    fn tensor(&self, name: &str, device: &Device) -> Result<QTensor>;
}

impl WeightSource for GgufModel {
    fn has_tensor(&self, name: &str) -> bool {
        GgufModel::has_tensor(self, name)
    }

    fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        GgufModel::tensor(self, name, device)
    }
}

/// A Hugging Face checkpoint: `config.json` and `model.safetensors` (f32, f16 or bf16).
pub struct SafetensorsWeights {
    tensors: HashMap<String, Tensor>,
    path: std::path::PathBuf,
    /// The format the layers' weight matrices are quantized to as they load (None: f32).
    layer_matrices: Option<GgmlDType>,
}

/// GGUF tensor name -> Hugging Face (Llama/Qwen2 layout) name.
pub fn hf_name(gguf_name: &str) -> String {
    match gguf_name {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let Some(rest) = gguf_name.strip_prefix("blk.") else {
        return gguf_name.to_string();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return gguf_name.to_string();
    };
    let (part, suffix) = rest.split_once('.').unwrap_or((rest, ""));
    let module = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return gguf_name.to_string(),
    };
    format!("model.layers.{layer}.{module}.{suffix}")
}

impl SafetensorsWeights {
    /// Reads `dir/model.safetensors` (or every `*.safetensors` in `dir`) onto the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| {
                EngineError::InvalidArgument(format!("cannot read {}: {e}", dir.display()))
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(EngineError::ModelNotFound(dir.join("model.safetensors")));
        }
        let mut tensors = HashMap::new();
        for f in &files {
            let t = candle_core::safetensors::load(f, &Device::Cpu).map_err(|e| {
                EngineError::CorruptGguf {
                    path: f.clone(),
                    reason: candle_message(&e),
                }
            })?;
            tensors.extend(t);
        }
        Ok(Self {
            tensors,
            path: dir.to_path_buf(),
            layer_matrices: None,
        })
    }

    /// Quantizes the layers' weight matrices to `dtype` as they load (embeddings, norms and
    /// biases stay f32), so that they run on ttc's quantized kernels: Q8_0 keeps a model's
    /// outputs within rounding of f32 at a quarter of the memory, as llama.cpp serves
    /// reward models.
    pub fn with_layer_matrices(mut self, dtype: GgmlDType) -> Self {
        self.layer_matrices = Some(dtype);
        self
    }

    /// A tensor by its own (Hugging Face) name, as f32 on `device`.
    pub fn raw(&self, hf: &str, device: &Device) -> Result<Tensor> {
        let t = self
            .tensors
            .get(hf)
            .ok_or_else(|| EngineError::CorruptGguf {
                path: self.path.clone(),
                reason: format!("tensor '{hf}' is missing"),
            })?;
        Ok(t.to_dtype(DType::F32)?.to_device(device)?)
    }

    pub fn has_raw(&self, hf: &str) -> bool {
        self.tensors.contains_key(hf)
    }
}

impl WeightSource for SafetensorsWeights {
    fn has_tensor(&self, name: &str) -> bool {
        self.has_raw(&hf_name(name))
    }

    fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let t = self.raw(&hf_name(name), device)?;
        let dtype = match self.layer_matrices {
            Some(q)
                if name.starts_with("blk.")
                    && name.ends_with(".weight")
                    && t.rank() == 2
                    && t.dim(1)? % q.block_size() == 0 =>
            {
                q
            }
            _ => GgmlDType::F32,
        };
        Ok(QTensor::quantize(&t, dtype)?)
    }
}

#[derive(serde::Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    num_hidden_layers: usize,
    rms_norm_eps: f32,
    rope_theta: Option<f32>,
    max_position_embeddings: usize,
    vocab_size: usize,
}

/// Hyper-parameters from a Hugging Face `config.json` (llama or qwen2 model types).
pub fn config_from_hf(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|_| EngineError::ModelNotFound(path.to_path_buf()))?;
    let c: HfConfig = serde_json::from_str(&text).map_err(|e| EngineError::CorruptGguf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let architecture = Architecture::from_gguf_name(&c.model_type)?;
    use crate::models::limits;
    let kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
    let bounded = [
        ("hidden_size", c.hidden_size, limits::MAX_HIDDEN),
        (
            "num_attention_heads",
            c.num_attention_heads,
            limits::MAX_HEADS,
        ),
        ("num_key_value_heads", kv_heads, limits::MAX_HEADS),
        ("num_hidden_layers", c.num_hidden_layers, limits::MAX_LAYERS),
        (
            "max_position_embeddings",
            c.max_position_embeddings,
            limits::MAX_CONTEXT,
        ),
        ("vocab_size", c.vocab_size, limits::MAX_VOCAB),
    ];
    let corrupt = |reason: String| EngineError::CorruptGguf {
        path: path.to_path_buf(),
        reason,
    };
    for (name, v, max) in bounded {
        if !(1..=max).contains(&v) {
            return Err(corrupt(format!("{name} is {v}, outside 1..={max}")));
        }
    }
    let head_dim = c.hidden_size / c.num_attention_heads;
    if !c.hidden_size.is_multiple_of(c.num_attention_heads)
        || !head_dim.is_multiple_of(2)
        || !c.num_attention_heads.is_multiple_of(kv_heads)
    {
        return Err(corrupt(format!(
            "{} heads of {} dimensions over {kv_heads} KV heads",
            c.num_attention_heads, c.hidden_size
        )));
    }
    Ok(ModelConfig {
        architecture,
        n_layers: c.num_hidden_layers,
        hidden_size: c.hidden_size,
        n_heads: c.num_attention_heads,
        n_kv_heads: kv_heads,
        head_dim,
        rope_dim: head_dim,
        // Hugging Face's Llama and Qwen2 rotate halves (`rotate_half`); only GGUF's converter
        // permutes Llama's Q/K for adjacent pairs.
        rope_layout: RopeLayout::Halves,
        rope_theta: c.rope_theta.unwrap_or(10_000.0),
        rms_eps: c.rms_norm_eps,
        context_length: c.max_position_embeddings,
        vocab_size: c.vocab_size,
    })
}

#[cfg(test)]
mod tests {
    use super::{config_from_hf, hf_name, RopeLayout};

    /// Hugging Face Llama weights are not permuted like GGUF's: their rotary pairs are halves,
    /// whatever the architecture's GGUF files use.
    #[test]
    fn hugging_face_llama_weights_rotate_halves() {
        let dir = std::env::temp_dir().join(format!("ttc-hf-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        for model_type in ["llama", "qwen2"] {
            std::fs::write(
                &path,
                format!(
                    r#"{{"model_type": "{model_type}", "hidden_size": 64, "num_attention_heads": 4,
                    "num_hidden_layers": 2, "rms_norm_eps": 1e-6, "max_position_embeddings": 128,
                    "vocab_size": 100}}"#
                ),
            )
            .unwrap();
            assert_eq!(
                config_from_hf(&path).unwrap().rope_layout,
                RopeLayout::Halves,
                "{model_type}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(hf_name("token_embd.weight"), "model.embed_tokens.weight");
        assert_eq!(
            hf_name("blk.3.attn_q.bias"),
            "model.layers.3.self_attn.q_proj.bias"
        );
        assert_eq!(
            hf_name("blk.12.ffn_down.weight"),
            "model.layers.12.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("output_norm.weight"), "model.norm.weight");
    }
}
