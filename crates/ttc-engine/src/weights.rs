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
use crate::models::{Architecture, ModelConfig};

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
        })
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
        Ok(QTensor::quantize(&t, GgmlDType::F32)?)
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
    let head_dim = c.hidden_size / c.num_attention_heads;
    Ok(ModelConfig {
        architecture,
        n_layers: c.num_hidden_layers,
        hidden_size: c.hidden_size,
        n_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim,
        rope_dim: head_dim,
        rope_theta: c.rope_theta.unwrap_or(10_000.0),
        rms_eps: c.rms_norm_eps,
        context_length: c.max_position_embeddings,
        vocab_size: c.vocab_size,
    })
}

#[cfg(test)]
mod tests {
    use super::hf_name;

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
