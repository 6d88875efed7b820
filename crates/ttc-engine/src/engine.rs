//! The engine: a loaded model with its tokenizer and chat template, and single-sequence
//! generation (chunked prefill, then one token per step) with streaming and timings.

use std::sync::{Mutex, MutexGuard};

use candle_core::Device;

use crate::batcher::{BatchStats, DecodeBatcher};
use crate::chat_template::{ChatTemplate, Message, CHATML_TEMPLATE};
use crate::device::DeviceKind;
use crate::download::{self, ResolvedModel};
use crate::error::{EngineError, Result};
use crate::gguf::GgufModel;
use crate::kv_cache::{KvCache, KvStats, DEFAULT_BLOCK_SIZE};
use crate::models::{Architecture, ComputePath, Model, ModelConfig};
use crate::tokenizer::Tokenizer;

/// Tokens per prefill forward. Quantized logits depend on the chunking (activations are
/// quantized per block), so golden tests fix it; 512 is llama.cpp's default batch.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

pub struct LoadOptions {
    pub device: DeviceKind,
    pub show_progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: DeviceKind::Cpu,
            show_progress: false,
        }
    }
}

pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub resolved: ResolvedModel,
    /// A short name: the alias, or the file name.
    pub name: String,
    stop_strings: Vec<String>,
    pub prefill_chunk: usize,
    /// Tokens a sequence may hold (prompt + generated): the model's context unless lowered.
    context_limit: usize,
    block_size: usize,
    kv_budget: usize,
    /// The KV pool every session of this engine allocates from, with the prefix cache.
    kv: Mutex<KvCache>,
    /// Decode steps of concurrent sessions, run as one forward pass.
    pub(crate) batcher: DecodeBatcher,
}

impl Engine {
    /// Loads `spec` (an alias or a `.gguf` path).
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        let device = opts.device.open()?;
        let resolved = download::resolve(spec, opts.show_progress)?;
        Self::load_resolved(resolved, &device)
    }

    /// Loads `resolved` on `device`, on the default compute path ([`ComputePath::from_env`]).
    pub fn load_resolved(resolved: ResolvedModel, device: &Device) -> Result<Self> {
        Self::load_resolved_on(resolved, device, ComputePath::from_env()?)
    }

    /// As [`load_resolved`](Self::load_resolved), on `path` whatever the environment says:
    /// ttc's CPU kernels for one of `Isa::available()`, or the tensor path (the code CUDA and
    /// Metal run), for running one model on each in one process.
    pub fn load_resolved_on(
        resolved: ResolvedModel,
        device: &Device,
        path: ComputePath,
    ) -> Result<Self> {
        let gguf = GgufModel::open(&resolved.paths)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        if let Some(entry) = &resolved.entry {
            let expected = Architecture::from_gguf_name(&entry.architecture)?;
            if expected != config.architecture {
                return Err(EngineError::CorruptGguf {
                    path: gguf.path().to_path_buf(),
                    reason: format!(
                        "the registry says {}, the file says {}",
                        entry.architecture,
                        config.architecture.name()
                    ),
                });
            }
        }
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let token_text = |id: Option<u32>| id.map(|i| tokenizer.token_text(i)).unwrap_or_default();
        let template_src = resolved
            .entry
            .as_ref()
            .and_then(|e| e.chat_template.clone())
            .or_else(|| gguf.get_opt_str("tokenizer.chat_template"))
            .unwrap_or_else(|| CHATML_TEMPLATE.to_string());
        let template = ChatTemplate::new(
            &template_src,
            &token_text(tokenizer.bos_id),
            &token_text(tokenizer.eos_ids.first().copied()),
        )?;
        let model = Model::load_on(&gguf, config, device, path)?;
        let name = match &resolved.entry {
            Some(e) => e.alias.clone(),
            None => gguf
                .path()
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let stop_strings = resolved
            .entry
            .as_ref()
            .map(|e| e.stop.clone())
            .unwrap_or_default();
        let context_limit = model.config().context_length;
        let kv_budget = default_kv_budget(device);
        let kv = Mutex::new(kv_pool(model.config(), kv_budget, device)?);
        Ok(Self {
            model,
            tokenizer,
            template,
            resolved,
            name,
            stop_strings,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            context_limit,
            block_size: DEFAULT_BLOCK_SIZE,
            kv_budget,
            kv,
            batcher: DecodeBatcher::default(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    pub fn context_limit(&self) -> usize {
        self.context_limit
    }

    /// Lowers the context (never above what the model was trained for).
    pub fn set_context_limit(&mut self, tokens: usize) -> Result<()> {
        let max = self.config().context_length;
        if tokens == 0 || tokens > max {
            return Err(EngineError::InvalidArgument(format!(
                "context must be in 1..={max}, got {tokens}"
            )));
        }
        self.context_limit = tokens;
        Ok(())
    }

    /// The prompt text for one user turn, with an optional system prompt (without one, the
    /// template's default system prompt applies, as in llama.cpp).
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        self.template.render(messages, true)
    }

    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.tokenizer.encode_prompt(&self.render_chat(messages)?)
    }

    /// Replaces the model's chat template with `source` (llama.cpp's `--chat-template-file`):
    /// compiled, and later rendered, in the sandbox like the model file's own.
    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        let text = |id: Option<u32>| id.map(|i| self.tokenizer.token_text(i)).unwrap_or_default();
        self.template = ChatTemplate::new(
            source,
            &text(self.tokenizer.bos_id),
            &text(self.tokenizer.eos_ids.first().copied()),
        )?;
        Ok(())
    }

    /// The stop strings of the model (its registry entry).
    pub fn stop_strings(&self) -> &[String] {
        &self.stop_strings
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The most bytes of KV cache one request may hold.
    pub fn kv_budget(&self) -> usize {
        self.kv_budget
    }

    /// Sets the KV budget; the pool starts again empty (its prefix cache too).
    pub fn set_kv_budget(&mut self, bytes: usize) -> Result<()> {
        let pool = kv_pool(self.config(), bytes, self.model.device())?;
        self.kv = Mutex::new(pool);
        self.kv_budget = bytes;
        Ok(())
    }

    /// The KV pool, locked (a panic elsewhere while it was held leaves it usable: every
    /// operation on it is all or nothing).
    pub(crate) fn kv(&self) -> MutexGuard<'_, KvCache> {
        self.kv
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the KV pool holds now.
    pub fn kv_stats(&self) -> KvStats {
        self.kv().stats()
    }

    /// What the decode batcher did so far (sessions decoding now, the last pass's width).
    pub fn batch_stats(&self) -> BatchStats {
        self.batcher.stats()
    }

    /// Evicts every prefix-cache block no live sequence holds; returns how many.
    pub fn clear_prefix_cache(&self) -> usize {
        self.kv().clear_prefix_cache()
    }

    /// Bytes of one KV block (all layers, K and V).
    pub(crate) fn kv_block_bytes(&self) -> usize {
        self.block_size * self.config().kv_bytes_per_token()
    }

    /// KV blocks a request needs: the prompt once, and for each of `width` sequences its
    /// generated tokens plus one block for a copied partial block (copy-on-write).
    pub fn blocks_for_plan(&self, prompt_len: usize, width: usize, max_new: usize) -> usize {
        let bs = self.block_size;
        prompt_len.div_ceil(bs) + width * (max_new.div_ceil(bs) + 1)
    }

    /// The widest request of this shape that fits the KV budget (0 if not even one does).
    pub fn max_width_for(&self, prompt_len: usize, max_new: usize) -> usize {
        let budget_blocks = self.kv_budget / self.kv_block_bytes();
        let per_sequence = self.blocks_for_plan(0, 1, max_new);
        budget_blocks.saturating_sub(self.blocks_for_plan(prompt_len, 0, max_new)) / per_sequence
    }
}

/// An empty pool that grows up to `budget` bytes (at least one block).
fn kv_pool(config: &ModelConfig, budget: usize, device: &Device) -> Result<KvCache> {
    let block_bytes = DEFAULT_BLOCK_SIZE * config.kv_bytes_per_token();
    let max_blocks = (budget / block_bytes.max(1)).max(1);
    KvCache::growable(config, 0, max_blocks, DEFAULT_BLOCK_SIZE, device)
}

/// Half of the memory available now (RAM on the CPU; a fixed 4 GiB on a GPU, whose free
/// memory candle does not report): the default KV budget.
pub fn default_kv_budget(device: &Device) -> usize {
    const FALLBACK: usize = 4 << 30;
    if !device.is_cpu() {
        return FALLBACK;
    }
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map(|kb| kb * 1024 / 2)
        .unwrap_or(FALLBACK)
}
