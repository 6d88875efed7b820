//! `/metrics` in Prometheus' text format: requests by status, the queue, running requests and
//! sequences, KV blocks, time to first token and inter-token latency, configurations chosen.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ttc_engine::Engine;

/// Bucket bounds in seconds.
const BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, x: f64) {
        for (c, b) in self.counts.iter_mut().zip(BOUNDS) {
            if x <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += x;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(BOUNDS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    chosen: Mutex<BTreeMap<String, u64>>,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
    /// Requests waiting for a slot, and requests running.
    pub queued: AtomicUsize,
    pub running: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn request_done(&self, status: u16) {
        *lock(&self.requests).entry(status).or_default() += 1;
    }

    pub fn chose(&self, config: &str) {
        *lock(&self.chosen).entry(config.to_string()).or_default() += 1;
    }

    pub fn time_to_first_token(&self, s: f64) {
        lock(&self.ttft).observe(s);
    }

    pub fn inter_token(&self, s: f64) {
        lock(&self.itl).observe(s);
    }

    pub fn render(&self, engine: &Engine) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ttc_requests_total Requests answered, by HTTP status.\n# TYPE ttc_requests_total counter"
        );
        for (status, n) in lock(&self.requests).iter() {
            let _ = writeln!(out, "ttc_requests_total{{status=\"{status}\"}} {n}");
        }
        let kv = engine.kv_stats();
        let batch = engine.batch_stats();
        let gauges = [
            (
                "ttc_queue_length",
                "Requests waiting for a slot.",
                self.queued.load(Ordering::Relaxed),
            ),
            (
                "ttc_running_requests",
                "Requests running.",
                self.running.load(Ordering::Relaxed),
            ),
            (
                "ttc_decoding_sessions",
                "Requests decoding in the shared passes now.",
                batch.decoding_sessions,
            ),
            (
                "ttc_running_sequences",
                "Sequences in the last decode pass.",
                if batch.decoding_sessions > 0 {
                    batch.last_width
                } else {
                    0
                },
            ),
            (
                "ttc_kv_blocks_live",
                "KV blocks held by running sequences.",
                kv.live_blocks(),
            ),
            (
                "ttc_kv_blocks_cached",
                "KV blocks held only by the prefix cache (evictable).",
                kv.evictable_blocks,
            ),
            (
                "ttc_kv_blocks_free",
                "KV blocks free in the pool's storage.",
                kv.free_blocks,
            ),
            (
                "ttc_kv_blocks_capacity",
                "KV blocks the pool has storage for.",
                kv.capacity_blocks,
            ),
            (
                "ttc_kv_blocks_max",
                "KV blocks the pool may grow to (--kv-memory).",
                kv.max_blocks,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP ttc_decode_passes_total Batched decode passes.\n# TYPE ttc_decode_passes_total counter\nttc_decode_passes_total {}",
            batch.passes
        );
        lock(&self.ttft).render(
            "ttc_time_to_first_token_seconds",
            "From a request's arrival to its first token out.",
            &mut out,
        );
        lock(&self.itl).render(
            "ttc_inter_token_latency_seconds",
            "Between two streamed pieces of one answer.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP ttc_configurations_chosen_total What ran, by configuration.\n# TYPE ttc_configurations_chosen_total counter"
        );
        for (config, n) in lock(&self.chosen).iter() {
            let _ = writeln!(
                out,
                "ttc_configurations_chosen_total{{config=\"{config}\"}} {n}"
            );
        }
        out
    }
}
