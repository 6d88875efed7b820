//! Continuous batching across sessions: the decode steps that concurrent sessions (a server's
//! requests, each running its own method on its own thread) take at the same time run as one
//! forward pass over all their sequences. Requests join at their first step and leave when
//! their session ends; nothing else changes for a method, which still calls `step`.
//!
//! Group commit: a session queues its rows and waits; the first waiter that finds no pass
//! running leads the next one, once every session that is decoding has queued its rows (or
//! after [`GATHER`], so a session busy elsewhere, in a prefill or scoring, delays the others
//! by that at most). One session alone never waits. vLLM's and SGLang's schedulers run one
//! engine loop to the same end; here the loop is whichever request thread leads.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_core::DType;

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::models::BatchEntry;

/// How long a leader waits for decoding sessions that have not queued their rows yet.
pub const GATHER: Duration = Duration::from_millis(2);

struct Ticket {
    id: u64,
    tokens: Vec<u32>,
    slots: Vec<Vec<u32>>,
}

#[derive(Default)]
struct State {
    queue: Vec<Ticket>,
    results: HashMap<u64, std::result::Result<Vec<Vec<f32>>, String>>,
    running: bool,
    next_id: u64,
    /// Sessions that have decoded and not ended.
    decoding: usize,
    /// Rows in the last pass and the widest pass, and passes run (for metrics).
    last_width: usize,
    widest: usize,
    passes: u64,
}

#[derive(Default)]
pub struct DecodeBatcher {
    state: Mutex<State>,
    changed: Condvar,
}

/// What the batcher did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    /// Sessions decoding now.
    pub decoding_sessions: usize,
    /// Rows (sequences) in the last forward pass, and in the widest one so far.
    pub last_width: usize,
    pub widest: usize,
    pub passes: u64,
}

impl DecodeBatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session starts decoding.
    pub(crate) fn join(&self) {
        self.lock().decoding += 1;
    }

    /// A session that joined has ended.
    pub(crate) fn leave(&self) {
        let mut st = self.lock();
        st.decoding = st.decoding.saturating_sub(1);
        drop(st);
        self.changed.notify_all();
    }

    pub fn stats(&self) -> BatchStats {
        let st = self.lock();
        BatchStats {
            decoding_sessions: st.decoding,
            last_width: st.last_width,
            widest: st.widest,
            passes: st.passes,
        }
    }

    /// The next-token logits of one decode row per `tokens[i]` at `slots[i]` (reserved by the
    /// caller), computed in one forward pass with whatever other sessions queue meanwhile.
    pub(crate) fn decode(
        &self,
        engine: &Engine,
        tokens: Vec<u32>,
        slots: Vec<Vec<u32>>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.queue.push(Ticket { id, tokens, slots });
        let queued_at = Instant::now();
        loop {
            if let Some(r) = st.results.remove(&id) {
                return r.map_err(EngineError::InvalidArgument);
            }
            let waited = queued_at.elapsed();
            if !st.running && (st.queue.len() >= st.decoding || waited >= GATHER) {
                st.running = true;
                let batch = std::mem::take(&mut st.queue);
                drop(st);
                let out = run(engine, &batch);
                st = self.lock();
                st.running = false;
                st.passes += 1;
                st.last_width = batch.iter().map(|t| t.tokens.len()).sum();
                st.widest = st.widest.max(st.last_width);
                match out {
                    Ok(rows) => {
                        let mut rows = rows.into_iter();
                        for t in &batch {
                            let mine: Vec<Vec<f32>> = rows.by_ref().take(t.tokens.len()).collect();
                            st.results.insert(t.id, Ok(mine));
                        }
                    }
                    Err(e) => {
                        for t in &batch {
                            st.results.insert(t.id, Err(format!("batched decode: {e}")));
                        }
                    }
                }
                self.changed.notify_all();
                continue;
            }
            let wait = if st.running {
                Duration::from_millis(50)
            } else {
                GATHER.saturating_sub(waited).max(Duration::from_micros(50))
            };
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// One forward pass over every ticket's rows, under the KV pool's lock.
fn run(engine: &Engine, batch: &[Ticket]) -> Result<Vec<Vec<f32>>> {
    let toks: Vec<[u32; 1]> = batch
        .iter()
        .flat_map(|t| t.tokens.iter().map(|&x| [x]))
        .collect();
    let slots: Vec<&Vec<u32>> = batch.iter().flat_map(|t| t.slots.iter()).collect();
    let entries: Vec<BatchEntry> = toks
        .iter()
        .zip(&slots)
        .map(|(t, s)| BatchEntry {
            tokens: t,
            slots: s,
            want_output: true,
        })
        .collect();
    let kv = engine.kv();
    let out = engine.model.forward_batch(&entries, &kv)?;
    drop(kv);
    Ok(out
        .logits
        .expect("asked for output")
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?)
}
