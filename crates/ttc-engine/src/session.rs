//! The engine's sequence API, what test-time scaling methods are written against (docs/design.md):
//! `prefill` a prompt once, `fork` it into samples or beams that share its KV blocks, `step` any
//! set of sequences in one batched forward pass, read each sequence's tokens, text, log-probs
//! and the prompt's final hidden state, and `free` what is no longer needed. Methods never touch
//! tensors or blocks; the engine never knows what a beam is.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::kv_cache::{KvCache, SeqId};
use crate::models::BatchEntry;
use crate::sampler::{Sampled, Sampler, SamplingParams};
use crate::tokenizer::StreamDecoder;

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub params: SamplingParams,
    /// Each sequence's RNG is seeded from this and its id, so a run is reproducible.
    pub seed: u64,
    /// Generated tokens per sequence at most.
    pub max_tokens: usize,
    /// Stop strings beside the model's own.
    pub stop: Vec<String>,
    /// Generate past EOS and the model's own stop strings (not past `stop`).
    pub ignore_eos: bool,
    /// Prompts start from the full KV blocks the engine's prefix cache already holds for
    /// their first tokens, and leave theirs behind (chat turns, a shared system prompt).
    pub prefix_cache: bool,
}

impl Default for SessionOptions {
    /// Default sampling, seed 0, 256 tokens, no stop strings, no prefix cache.
    fn default() -> Self {
        Self {
            params: SamplingParams::default(),
            seed: 0,
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
            prefix_cache: false,
        }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
    StopString,
    ContextFull,
    /// The sequence's step stop (e.g. a beam step's "\n\n") was generated: the step is over,
    /// the text is kept whole, and the sequence can be resumed.
    StepEnd,
    /// The caller's cancel flag was set (Ctrl-C in the chat).
    Cancelled,
}

impl Engine {
    /// A session for a request of `width` sequences of at most `opts.max_tokens` new tokens
    /// after a prompt of `prompt_len`: refused before anything runs if it cannot fit the KV
    /// budget.
    pub fn session(
        &self,
        prompt_len: usize,
        width: usize,
        opts: SessionOptions,
    ) -> Result<Session<'_>> {
        let blocks = self.blocks_for_plan(prompt_len, width.max(1), opts.max_tokens);
        self.session_for_blocks(blocks, opts)
    }

    /// A session for a plan of `blocks` KV blocks (a request that prefills several prompts or
    /// may end up with one of two shapes: the largest of [`Engine::blocks_for_plan`]), refused
    /// if it cannot fit the KV budget.
    pub fn session_for_blocks(&self, blocks: usize, opts: SessionOptions) -> Result<Session<'_>> {
        let needed_bytes = blocks * self.kv_block_bytes();
        if needed_bytes > self.kv_budget() {
            return Err(EngineError::OverKvBudget {
                needed_bytes,
                budget_bytes: self.kv_budget(),
            });
        }
        Session::new(self, opts, blocks)
    }
}

/// What the session has spent so far.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Counters {
    /// Prompt tokens run through the model.
    pub prefill_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix cache instead.
    pub prefix_hit_tokens: usize,
    /// Tokens sampled by `step`.
    pub decode_tokens: usize,
    /// Forward passes (prefill chunks and batched decode steps).
    pub forward_passes: usize,
    pub prefill_s: f64,
    /// Time in `step`: sampling and the decode forward passes.
    pub decode_s: f64,
    /// Token rows computed by decode forward passes (one per sequence that went on). The
    /// first token after a prefill comes from the prefill's logits, so after `G` steps this is
    /// `G - 1` per sequence while `decode_tokens` is `G`.
    pub decode_forward_tokens: usize,
    /// Time in decode forward passes alone (no sampling): what llama-bench and
    /// llama-batched-bench time.
    pub decode_forward_s: f64,
}

/// What one `step` did to one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEvent {
    pub seq: SeqId,
    /// The token sampled (None when the sequence ended on EOS).
    pub token: Option<u32>,
    /// New text that is final: whole characters, not part of a possible stop string.
    pub piece: String,
    pub finished: Option<StopReason>,
}

#[derive(Clone)]
struct SeqState {
    prompt_len: usize,
    generated: Vec<u32>,
    logprobs: Vec<f32>,
    self_certainties: Vec<f32>,
    /// Ends a step without ending the sequence (a beam step's "\n\n").
    step_stop: Option<String>,
    /// Byte offset in `text` where the current step began.
    step_start: usize,
    /// Logits of the next token, once computed.
    logits: Option<Vec<f32>>,
    /// Final hidden state at the prompt's last token.
    prompt_hidden: Option<Tensor>,
    sampler: Sampler,
    /// The sequence's place among those the session created (its random stream).
    ordinal: u32,
    decoder: StreamDecoder,
    text: String,
    emitted: usize,
    finished: Option<StopReason>,
}

pub struct Session<'e> {
    engine: &'e Engine,
    seqs: BTreeMap<SeqId, SeqState>,
    opts: SessionOptions,
    stops: Vec<String>,
    counters: Counters,
    /// The most KV blocks the session's sequences held at once.
    peak_blocks: usize,
    /// Sequences created so far.
    created: u32,
    /// Whether the session decodes in the engine's batcher (from its first step to its end).
    joined: bool,
}

impl<'e> Session<'e> {
    /// A session on the engine's KV pool, grown now to hold `kv_blocks` more blocks (see
    /// [`Engine::blocks_for_plan`]) than its live sequences do.
    fn new(engine: &'e Engine, opts: SessionOptions, kv_blocks: usize) -> Result<Self> {
        opts.params
            .validate()
            .map_err(EngineError::InvalidArgument)?;
        {
            engine.kv().ensure_capacity(kv_blocks)?;
        }
        // The model's own stop strings are its end-of-turn markers written out: `ignore_eos`
        // (benchmarks, the latency profile) ignores them with the EOS token.
        let model_stops: &[String] = if opts.ignore_eos {
            &[]
        } else {
            engine.stop_strings()
        };
        let stops = model_stops
            .iter()
            .chain(&opts.stop)
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        Ok(Self {
            engine,
            seqs: BTreeMap::new(),
            opts,
            stops,
            counters: Counters::default(),
            peak_blocks: 0,
            created: 0,
            joined: false,
        })
    }

    /// The sampler of the session's `ordinal`-th sequence: seeded by the session's seed and
    /// the sequence's place in the session (not its id in the shared pool), so a run is the
    /// same whatever ran on the engine before it.
    fn sampler_for(&self, ordinal: u32) -> Sampler {
        // splitmix-style mixing, so neighbouring ordinals get unrelated streams.
        let mixed = (self.opts.seed ^ (u64::from(ordinal) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .rotate_left(17);
        Sampler::new(self.opts.params.clone(), mixed)
    }

    fn next_ordinal(&mut self) -> u32 {
        self.created += 1;
        self.created - 1
    }

    /// Changes how tokens are sampled, for every sequence from now on (each keeps a fresh,
    /// seeded stream). The allocator prefills once, then picks greedy or sampling.
    pub fn set_sampling(&mut self, params: SamplingParams) -> Result<()> {
        params.validate().map_err(EngineError::InvalidArgument)?;
        self.opts.params = params;
        let ids: Vec<(SeqId, u32)> = self.seqs.iter().map(|(&k, st)| (k, st.ordinal)).collect();
        for (seq, ordinal) in ids {
            let sampler = self.sampler_for(ordinal);
            if let Some(st) = self.seqs.get_mut(&seq) {
                st.sampler = sampler;
            }
        }
        Ok(())
    }

    /// Changes the most tokens each sequence generates, from now on (the allocator learns after
    /// the prefill what kind of answer it is running).
    pub fn set_max_tokens(&mut self, max_tokens: usize) -> Result<()> {
        if max_tokens == 0 {
            return Err(EngineError::InvalidArgument(
                "max_tokens must be at least 1".into(),
            ));
        }
        self.opts.max_tokens = max_tokens;
        Ok(())
    }

    /// Runs `prompt` through the model (in chunks of the engine's prefill size) and returns a
    /// sequence whose next-token logits are ready.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<SeqId> {
        let ctx = self.engine.context_limit();
        if prompt.is_empty() {
            return Err(EngineError::InvalidArgument("empty prompt".into()));
        }
        if prompt.len() >= ctx {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt.len(),
                context: ctx,
            });
        }
        let t0 = Instant::now();
        let engine = self.engine;
        let mut kv = engine.kv();
        let (seq, hit) = if self.opts.prefix_cache {
            kv.new_sequence_with_prefix(prompt)
        } else {
            (kv.new_sequence(), 0)
        };
        let result = (|| {
            let chunks: Vec<&[u32]> = prompt[hit..]
                .chunks(self.engine.prefill_chunk.max(1))
                .collect();
            let mut last = None;
            for (i, chunk) in chunks.iter().enumerate() {
                let start = kv.len(seq);
                kv.reserve(seq, chunk.len())?;
                let slots = kv.slots(seq, 0..start + chunk.len())?;
                // Only the last chunk's logits and hidden state are needed.
                let want_output = i + 1 == chunks.len();
                let out = self.engine.model.forward_batch(
                    &[BatchEntry {
                        tokens: chunk,
                        slots: &slots,
                        want_output,
                    }],
                    &kv,
                )?;
                kv.commit(seq, chunk)?;
                self.counters.forward_passes += 1;
                last = Some(out);
            }
            Ok::<_, EngineError>(last.expect("at least one prompt token is computed"))
        })();
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                kv.free(seq);
                return Err(e);
            }
        };
        drop(kv);
        let logits = out
            .logits
            .expect("asked for output")
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let ordinal = self.next_ordinal();
        let state = SeqState {
            prompt_len: prompt.len(),
            generated: Vec::new(),
            logprobs: Vec::new(),
            self_certainties: Vec::new(),
            step_stop: None,
            step_start: 0,
            logits: Some(logits),
            prompt_hidden: out.hidden.map(|h| h.squeeze(0)).transpose()?,
            sampler: self.sampler_for(ordinal),
            ordinal,
            decoder: StreamDecoder::default(),
            text: String::new(),
            emitted: 0,
            finished: None,
        };
        self.seqs.insert(seq, state);
        let engine = self.engine;
        self.note_peak(&engine.kv());
        self.counters.prefill_tokens += prompt.len() - hit;
        self.counters.prefix_hit_tokens += hit;
        self.counters.prefill_s += t0.elapsed().as_secs_f64();
        Ok(seq)
    }

    /// `n` new sequences that continue from `seq` as it is now (its KV blocks shared, its
    /// text and pending logits copied), each with its own random stream.
    pub fn fork(&mut self, seq: SeqId, n: usize) -> Result<Vec<SeqId>> {
        let parent = self.state(seq)?.clone();
        let mut children = Vec::with_capacity(n);
        let engine = self.engine;
        let mut kv = engine.kv();
        for _ in 0..n {
            let child = kv.fork(seq)?;
            let mut state = parent.clone();
            state.ordinal = self.next_ordinal();
            state.sampler = self.sampler_for(state.ordinal);
            self.seqs.insert(child, state);
            children.push(child);
        }
        Ok(children)
    }

    /// Drops `seq`; its blocks return to the pool when no other sequence holds them.
    pub fn free(&mut self, seq: SeqId) {
        if self.seqs.remove(&seq).is_some() {
            self.engine.kv().free(seq);
        }
    }

    /// Samples one token for each of `seqs` and runs one batched forward pass over those that
    /// go on. An unknown or finished sequence in `seqs`, or a full KV pool, is an error that
    /// changes nothing: every check and every KV reservation comes before any sampling.
    pub fn step(&mut self, seqs: &[SeqId]) -> Result<Vec<StepEvent>> {
        let t0 = Instant::now();
        for (i, &seq) in seqs.iter().enumerate() {
            let st = self.state(seq)?;
            if st.finished.is_some() || st.logits.is_none() {
                return Err(EngineError::InvalidArgument(format!(
                    "{seq:?} has finished"
                )));
            }
            if seqs[..i].contains(&seq) {
                return Err(EngineError::InvalidArgument(format!(
                    "{seq:?} is listed twice"
                )));
            }
        }
        let engine = self.engine;
        let mut kv = engine.kv();
        for &seq in seqs {
            // Room for the token about to be sampled (unused if the sequence then ends).
            kv.reserve(seq, 1)?;
        }
        // Sampling reads the whole vocabulary per sequence (log-sum-exp, top-k): done in
        // parallel, one task per sequence. Each has its own RNG, so order changes nothing.
        let mut sampled: std::collections::HashMap<SeqId, Sampled> = {
            use rayon::prelude::*;
            let states: Vec<(SeqId, &mut SeqState)> = self
                .seqs
                .iter_mut()
                .filter(|(k, _)| seqs.contains(k))
                .map(|(k, st)| (*k, st))
                .collect();
            states
                .into_par_iter()
                .map(|(k, st)| {
                    let logits = st.logits.take().expect("checked above");
                    (k, st.sampler.sample(&logits))
                })
                .collect()
        };
        let ctx = self.engine.context_limit();
        let tokenizer = &self.engine.tokenizer;
        let mut events = Vec::with_capacity(seqs.len());
        let mut go_on: Vec<(SeqId, u32)> = Vec::new();
        for &seq in seqs {
            let ignore_eos = self.opts.ignore_eos;
            let max_tokens = self.opts.max_tokens;
            let kv_len = kv.len(seq);
            let stops = &self.stops;
            let st = self.seqs.get_mut(&seq).expect("checked above");
            let s = sampled.remove(&seq).expect("sampled above");
            if tokenizer.is_eos(s.token) && !ignore_eos {
                st.finished = Some(StopReason::Eos);
                let rest = st.decoder.finish();
                st.text.push_str(&rest);
                let piece = st.text[st.emitted..].to_string();
                st.emitted = st.text.len();
                events.push(StepEvent {
                    seq,
                    token: None,
                    piece,
                    finished: st.finished,
                });
                continue;
            }
            st.generated.push(s.token);
            st.logprobs.push(s.logprob);
            st.self_certainties.push(s.self_certainty);
            st.text.push_str(&st.decoder.push(tokenizer, s.token));
            let mut piece = String::new();
            if let Some(pos) = stops.iter().filter_map(|x| st.text.find(x.as_str())).min() {
                st.text.truncate(pos);
                st.finished = Some(StopReason::StopString);
                if pos > st.emitted {
                    piece = st.text[st.emitted..].to_string();
                }
                st.emitted = st.text.len();
            } else {
                if st.generated.len() >= max_tokens {
                    st.finished = Some(StopReason::MaxTokens);
                } else if kv_len + 1 >= ctx {
                    st.finished = Some(StopReason::ContextFull);
                } else if st
                    .step_stop
                    .as_deref()
                    .is_some_and(|x| st.text[st.step_start..].contains(x))
                {
                    st.finished = Some(StopReason::StepEnd);
                }
                if st.finished.is_some_and(|r| r != StopReason::StepEnd) {
                    let rest = st.decoder.finish();
                    st.text.push_str(&rest);
                }
                let safe = if st.finished.is_some() {
                    st.text.len()
                } else {
                    safe_emit_len(&st.text, stops)
                };
                if safe > st.emitted {
                    piece = st.text[st.emitted..safe].to_string();
                    st.emitted = safe;
                }
            }
            // A step end still needs the forward pass: the sequence will be resumed.
            if st.finished.is_none() || st.finished == Some(StopReason::StepEnd) {
                go_on.push((seq, s.token));
            }
            events.push(StepEvent {
                seq,
                token: Some(s.token),
                piece,
                finished: st.finished,
            });
        }
        self.counters.decode_tokens += events.iter().filter(|e| e.token.is_some()).count();
        self.note_peak(&kv);
        if !go_on.is_empty() {
            // The pass may be shared with other sessions' rows: the pool is theirs too.
            drop(kv);
            self.forward_decode(&go_on)?;
        }
        self.counters.decode_s += t0.elapsed().as_secs_f64();
        Ok(events)
    }

    /// The decode pass for `go_on` (slots reserved by `step`), batched with whatever other
    /// sessions of the engine decode at the same time ([`crate::batcher`]).
    fn forward_decode(&mut self, go_on: &[(SeqId, u32)]) -> Result<()> {
        let engine = self.engine;
        let slots = {
            let kv = engine.kv();
            go_on
                .iter()
                .map(|&(seq, _)| {
                    let len = kv.len(seq);
                    kv.slots(seq, 0..len + 1)
                })
                .collect::<Result<Vec<_>>>()?
        };
        if !self.joined {
            engine.batcher.join();
            self.joined = true;
        }
        let t0 = Instant::now();
        let tokens = go_on.iter().map(|&(_, t)| t).collect();
        let logits = engine.batcher.decode(engine, tokens, slots)?;
        self.counters.forward_passes += 1;
        self.counters.decode_forward_tokens += go_on.len();
        self.counters.decode_forward_s += t0.elapsed().as_secs_f64();
        let mut kv = engine.kv();
        for (&(seq, token), row) in go_on.iter().zip(logits) {
            kv.commit(seq, &[token])?;
            self.seqs.get_mut(&seq).expect("stepped").logits = Some(row);
        }
        Ok(())
    }

    fn state(&self, seq: SeqId) -> Result<&SeqState> {
        self.seqs.get(&seq).ok_or_else(|| unknown(seq))
    }

    /// Makes `stop` end each step of `seq` (None: steps end only with the sequence). The
    /// current step starts now.
    pub fn set_step_stop(&mut self, seq: SeqId, stop: Option<String>) -> Result<()> {
        let st = self.seqs.get_mut(&seq).ok_or_else(|| unknown(seq))?;
        st.step_stop = stop.filter(|s| !s.is_empty());
        st.step_start = st.text.len();
        Ok(())
    }

    /// Starts the next step of a sequence whose last step ended at its step stop.
    pub fn resume(&mut self, seq: SeqId) -> Result<()> {
        let st = self.seqs.get_mut(&seq).ok_or_else(|| unknown(seq))?;
        if st.finished == Some(StopReason::StepEnd) {
            st.finished = None;
        }
        st.step_start = st.text.len();
        Ok(())
    }

    /// Per generated token, KL(uniform || next-token distribution).
    pub fn self_certainties(&self, seq: SeqId) -> Result<&[f32]> {
        Ok(&self.state(seq)?.self_certainties)
    }

    /// Those of `seqs` that have not finished, in order.
    pub fn live(&self, seqs: &[SeqId]) -> Vec<SeqId> {
        seqs.iter()
            .copied()
            .filter(|&q| !self.is_finished(q))
            .collect()
    }

    pub fn is_finished(&self, seq: SeqId) -> bool {
        self.seqs.get(&seq).is_none_or(|s| s.finished.is_some())
    }

    pub fn finish_reason(&self, seq: SeqId) -> Option<StopReason> {
        self.seqs.get(&seq).and_then(|s| s.finished)
    }

    pub fn text(&self, seq: SeqId) -> Result<&str> {
        Ok(&self.state(seq)?.text)
    }

    pub fn generated(&self, seq: SeqId) -> Result<&[u32]> {
        Ok(&self.state(seq)?.generated)
    }

    /// log p of each generated token under the model (temperature 1).
    pub fn logprobs(&self, seq: SeqId) -> Result<&[f32]> {
        Ok(&self.state(seq)?.logprobs)
    }

    /// The next-token logits of `seq`, when computed and not yet sampled.
    pub fn logits(&self, seq: SeqId) -> Result<Option<&[f32]>> {
        Ok(self.state(seq)?.logits.as_deref())
    }

    pub fn prompt_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.state(seq)?.prompt_len)
    }

    /// The model's final hidden state at the prompt's last token (the allocator's feature).
    pub fn prompt_hidden(&self, seq: SeqId) -> Result<Option<&Tensor>> {
        Ok(self.state(seq)?.prompt_hidden.as_ref())
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The KV blocks this session's sequences hold now, and the most they held at once.
    pub fn kv_usage(&self) -> KvUsage {
        let kv = self.engine.kv();
        KvUsage {
            blocks: self.blocks_held(&kv),
            peak_blocks: self.peak_blocks,
            block_size: kv.block_size(),
            block_bytes: kv.block_bytes(),
            bytes_per_token: kv.bytes_per_token(),
        }
    }

    /// Distinct blocks the session's sequences hold (a shared prompt counts once).
    fn blocks_held(&self, kv: &KvCache) -> usize {
        let mut blocks: Vec<u32> = self
            .seqs
            .keys()
            .flat_map(|&s| kv.blocks(s).iter().copied())
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        blocks.len()
    }

    fn note_peak(&mut self, kv: &KvCache) {
        self.peak_blocks = self.peak_blocks.max(self.blocks_held(kv));
    }
}

/// What one session holds of the engine's KV pool (the pool itself: [`Engine::kv_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KvUsage {
    pub blocks: usize,
    pub peak_blocks: usize,
    pub block_size: usize,
    pub block_bytes: usize,
    pub bytes_per_token: usize,
}

impl KvUsage {
    pub fn peak_bytes(&self) -> usize {
        self.peak_blocks * self.block_bytes
    }
}

impl Drop for Session<'_> {
    /// Every sequence still held goes back to the pool (full blocks of indexed ones stay in
    /// the prefix cache).
    fn drop(&mut self) {
        let mut kv = self.engine.kv();
        for &seq in self.seqs.keys() {
            kv.free(seq);
        }
        drop(kv);
        if self.joined {
            self.engine.batcher.leave();
        }
    }
}

fn unknown(seq: SeqId) -> EngineError {
    EngineError::InvalidArgument(format!("unknown sequence {seq:?}"))
}

/// The length of the prefix of `text` that cannot be the start of a stop string.
pub(crate) fn safe_emit_len(text: &str, stops: &[String]) -> usize {
    let mut safe = text.len();
    for stop in stops {
        for (i, _) in text.char_indices().rev().take(stop.len()) {
            if stop.starts_with(&text[i..]) {
                safe = safe.min(i);
            }
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::safe_emit_len;

    #[test]
    fn holds_back_a_possible_stop_prefix() {
        let stops = vec!["<|im_end|>".to_string(), "\n\n".to_string()];
        assert_eq!(safe_emit_len("hello <|im", &stops), 6);
        assert_eq!(safe_emit_len("hello", &stops), 5);
        assert_eq!(safe_emit_len("a\n", &stops), 1);
    }
}
