//! The batched engine on the real model: samples and beams share the prompt's KV blocks, and
//! batching, forking, pruning and freeing never change what a sequence computes.

use ttc_e2e::{engine, engines_on_both_compute_paths};
use ttc_engine::chat_template::Message;
use ttc_engine::kv_cache::KvCache;
use ttc_engine::models::BatchEntry;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, EngineError, GenerateRequest, SeqId, Session, SessionOptions};

fn prompt(q: &str) -> Vec<u32> {
    engine().encode_chat(&[Message::new("user", q)]).unwrap()
}

fn session<'e>(
    e: &'e Engine,
    width: usize,
    params: SamplingParams,
    max_tokens: usize,
    prompt_len: usize,
) -> Session<'e> {
    let opts = SessionOptions {
        params,
        seed: 5,
        max_tokens,
        stop: vec![],
        ignore_eos: true,
        prefix_cache: false,
    };
    e.session(prompt_len, width, opts).unwrap()
}

fn run_to_end(s: &mut Session, seqs: &[SeqId]) {
    loop {
        let live = s.live(seqs);
        if live.is_empty() {
            break;
        }
        s.step(&live).unwrap();
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Logits after each of `parts` in its own forward pass (a prefill, then decode steps), on `e`.
fn logits_after(e: &Engine, parts: &[&[u32]]) -> Vec<f32> {
    let mut cache = KvCache::new(e.config(), 64, 16, e.model.device()).unwrap();
    let seq = cache.new_sequence();
    let mut last = Vec::new();
    for part in parts {
        let start = cache.len(seq);
        cache.reserve(seq, part.len()).unwrap();
        let slots = cache.slots(seq, 0..start + part.len()).unwrap();
        let out = e
            .model
            .forward_batch(
                &[BatchEntry {
                    tokens: part,
                    slots: &slots,
                    want_output: true,
                }],
                &cache,
            )
            .unwrap();
        cache.commit(seq, part).unwrap();
        last = out
            .logits
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
    }
    last
}

/// Logits after `prefix` then `tokens`, each in one forward pass, on `e`.
fn logits_on(e: &Engine, prefix: &[u32], tokens: &[u32]) -> Vec<f32> {
    logits_after(e, &[prefix, tokens])
}

/// Greedy decoding of a forked group, batched: every member is the same bits as the others
/// on every path. Against the sequence decoded alone, bit-exactness holds where attention
/// does not depend on the batch: the fused kernel (its grouped rows are the same bits) and
/// the tensor path without cascade attention. Cascade attention agrees to rounding only, and
/// on this model (activations re-quantized to 8 bits at every layer) that can flip a near
/// tie: where the group and the lone sequence part, the lone sequence's two candidates must
/// be within rounding noise of each other.
#[test]
fn a_forked_batched_group_decodes_as_one_sequence_alone() {
    let p = prompt("Name three animals that live in the sea.");
    let [fused, cascade] = engines_on_both_compute_paths();
    let plain = (
        "tensor path without cascade",
        ttc_e2e::engine_on_the_tensor_path_without_cascade(),
    );
    for (path, e) in [fused, plain, cascade] {
        let alone = e
            .generate(
                &p,
                &GenerateRequest {
                    ignore_eos: true,
                    ..GenerateRequest::greedy(24)
                },
                |_| {},
            )
            .unwrap();
        let mut s = session(e, 6, SamplingParams::greedy(), 24, p.len());
        let root = s.prefill(&p).unwrap();
        let kids = s.fork(root, 6).unwrap();
        s.free(root);
        run_to_end(&mut s, &kids);
        let group = s.generated(kids[0]).unwrap();
        for &k in &kids {
            assert_eq!(s.generated(k).unwrap(), group, "{path}: {k:?}");
        }
        if path != cascade.0 {
            assert_eq!(group, alone.tokens.as_slice(), "{path}");
            continue;
        }
        let Some(t) = group.iter().zip(&alone.tokens).position(|(a, b)| a != b) else {
            continue;
        };
        // The lone sequence's logits at the parting, computed as it computed them: the
        // prompt in one pass, then one token per pass.
        let mut parts: Vec<&[u32]> = vec![&p[..]];
        parts.extend(alone.tokens[..t].chunks(1));
        let l = logits_after(e, &parts);
        let (own, other) = (l[alone.tokens[t] as usize], l[group[t] as usize]);
        assert!(
            own >= other && own - other < 0.25,
            "{path}: at token {t} the lone sequence picks {} ({own}) over the group's {} \
             ({other}): not a near tie",
            alone.tokens[t],
            group[t]
        );
    }
}

#[test]
fn n_samples_cost_one_prefill_and_the_prompt_is_stored_once() {
    let p = prompt("Tell me a fact about the moon.");
    let (width, gen) = (16, 12);
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
    for (path, e) in engines_on_both_compute_paths() {
        let mut s = session(e, width, params.clone(), gen, p.len());
        let root = s.prefill(&p).unwrap();
        let prompt_blocks = s.kv_usage().blocks;
        let kids = s.fork(root, width).unwrap();
        assert_eq!(
            s.kv_usage().blocks,
            prompt_blocks,
            "{path}: forking copies nothing"
        );
        run_to_end(&mut s, &kids);
        let c = s.counters().clone();
        assert_eq!(c.prefill_tokens, p.len(), "{path}: one prefill");
        assert_eq!(c.decode_tokens, width * gen, "{path}");
        assert_eq!(
            c.forward_passes,
            1 + gen - 1,
            "{path}: one prefill chunk, then one batched pass per step but the last"
        );
        let distinct: std::collections::HashSet<&[u32]> =
            kids.iter().map(|&k| s.generated(k).unwrap()).collect();
        assert!(
            distinct.len() > 1,
            "{path}: samples with their own RNG differ"
        );
        // The prompt's full blocks are shared; each sample holds its own tail.
        let bs = s.kv_usage().block_size;
        let most = p.len().div_ceil(bs) + width * ((p.len() % bs + gen).div_ceil(bs));
        assert!(
            s.kv_usage().peak_blocks <= most,
            "{path}: {} > {most}",
            s.kv_usage().peak_blocks
        );
    }
}

#[test]
fn fork_diverge_and_free_leave_the_pool_as_it_was() {
    let p = prompt("Write one sentence about rain.");
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
    for (path, e) in engines_on_both_compute_paths() {
        let mut s = session(e, 8, params.clone(), 20, p.len());
        let root = s.prefill(&p).unwrap();
        let kids = s.fork(root, 8).unwrap();
        run_to_end(&mut s, &kids);
        let grandkids = s.fork(kids[3], 2).unwrap();
        for k in kids.iter().chain(&grandkids).chain([&root]) {
            s.free(*k);
        }
        assert_eq!(s.kv_usage().blocks, 0, "{path}: every block let go");
        assert!(s.kv_usage().peak_blocks > 0, "{path}");
    }
}

/// Bit-exact where attention does not depend on the batch (the fused kernel, the tensor path
/// without cascade attention): a survivor's rows do not depend on which rows shared its
/// passes. With cascade attention the four samples' shared-prefix passes agree with a lone
/// sequence's to rounding only, which can move a sampled token; that agreement is checked on
/// logits in `a_cascade_group_gives_the_logits_of_each_member_alone`.
#[test]
fn pruning_leaves_the_survivor_as_if_it_had_been_alone() {
    let p = prompt("Describe a forest in a few words.");
    let params = SamplingParams {
        temperature: 0.9,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
    let [fused, _] = engines_on_both_compute_paths();
    let plain = (
        "tensor path without cascade",
        ttc_e2e::engine_on_the_tensor_path_without_cascade(),
    );
    for (path, e) in [fused, plain] {
        // With company: four samples for 6 steps, then the others are pruned.
        let mut a = session(e, 4, params.clone(), 20, p.len());
        let root = a.prefill(&p).unwrap();
        let kids = a.fork(root, 4).unwrap();
        for _ in 0..6 {
            a.step(&kids).unwrap();
        }
        for &k in kids.iter().filter(|&&k| k != kids[2]) {
            a.free(k);
        }
        run_to_end(&mut a, &[kids[2]]);
        // Alone: the same place in its session (so the same random stream), never batched
        // with others.
        let mut b = session(e, 4, params.clone(), 20, p.len());
        let root_b = b.prefill(&p).unwrap();
        let kids_b = b.fork(root_b, 4).unwrap();
        for &k in kids_b.iter().filter(|&&k| k != kids_b[2]) {
            b.free(k);
        }
        run_to_end(&mut b, &[kids_b[2]]);
        assert_eq!(
            a.generated(kids[2]).unwrap(),
            b.generated(kids_b[2]).unwrap(),
            "{path}"
        );
    }
}

#[test]
fn a_ragged_batch_gives_the_logits_of_each_sequence_alone() {
    let a = prompt("Hi!");
    let b = prompt("Please explain in detail how a bicycle works.");
    let (a_prefix, a_new) = a.split_at(a.len() - 3); // three new tokens for A
    let (b_prefix, b_new) = b.split_at(b.len() - 1); // one new token for B
    for (path, e) in engines_on_both_compute_paths() {
        let mut cache = KvCache::new(e.config(), 64, 16, e.model.device()).unwrap();
        let (sa, sb) = (cache.new_sequence(), cache.new_sequence());
        for (seq, prefix) in [(sa, a_prefix), (sb, b_prefix)] {
            cache.reserve(seq, prefix.len()).unwrap();
            let slots = cache.slots(seq, 0..prefix.len()).unwrap();
            e.model
                .forward_batch(
                    &[BatchEntry {
                        tokens: prefix,
                        slots: &slots,
                        want_output: false,
                    }],
                    &cache,
                )
                .unwrap();
            cache.commit(seq, prefix).unwrap();
        }
        cache.reserve(sa, a_new.len()).unwrap();
        cache.reserve(sb, b_new.len()).unwrap();
        let slots_a = cache.slots(sa, 0..a.len()).unwrap();
        let slots_b = cache.slots(sb, 0..b.len()).unwrap();
        let out = e
            .model
            .forward_batch(
                &[
                    BatchEntry {
                        tokens: a_new,
                        slots: &slots_a,
                        want_output: true,
                    },
                    BatchEntry {
                        tokens: b_new,
                        slots: &slots_b,
                        want_output: true,
                    },
                ],
                &cache,
            )
            .unwrap();
        let rows = out.logits.unwrap().to_vec2::<f32>().unwrap();
        for (row, alone) in rows
            .iter()
            .zip([logits_on(e, a_prefix, a_new), logits_on(e, b_prefix, b_new)])
        {
            let diff = max_diff(row, &alone);
            assert!(diff < 1e-3, "{path}: batched and alone differ by {diff}");
        }
    }
}

/// One decode step of forked sequences whose suffixes after a shared prompt differ in length,
/// in one batch: the shared prefix is attended once for the group (cascade attention on the
/// tensor path, grouped rows in the fused kernel), and each row must be what the sequence
/// gives alone, computed in the same passes (prompt, suffix, next token), where no group
/// exists. The fused kernel and plain tensor attention give the same bits; cascade attention
/// sums in another order, and on this model a last-bit difference that moves an activation
/// across an 8-bit rounding step grows through the layers, so its bound is that of
/// `fused_cpu_attention_agrees_with_the_tensor_path`: the same top token, and no difference of
/// the whole units a wrong prefix, mask or merge makes (the tiny f32 models of
/// architectures.rs, which round nothing, check cascade attention to 1e-4).
#[test]
fn a_cascade_group_gives_the_logits_of_each_member_alone() {
    let p = prompt(
        "Please explain in detail how a bicycle works: the frame, the wheels, the chain, the \
         gears and the brakes, and why a moving bicycle stays upright.",
    );
    // Past the 32 slots from which rows form a group, in full blocks of 16 that the forks
    // share.
    assert!(p.len() >= 48, "{} prompt tokens", p.len());
    let suffixes: [&[u32]; 3] = [&[28], &[28, 314, 1115], &[30, 17, 42, 8, 91]];
    let next = [11u32, 12, 13];
    let [fused, cascade] = engines_on_both_compute_paths();
    let plain = (
        "tensor path without cascade",
        ttc_e2e::engine_on_the_tensor_path_without_cascade(),
    );
    for (path, e) in [fused, plain, cascade] {
        let mut cache = KvCache::new(e.config(), 64, 16, e.model.device()).unwrap();
        let root = cache.new_sequence();
        let append = |cache: &mut KvCache, seq: SeqId, tokens: &[u32]| {
            let start = cache.len(seq);
            cache.reserve(seq, tokens.len()).unwrap();
            let slots = cache.slots(seq, 0..start + tokens.len()).unwrap();
            e.model
                .forward_batch(
                    &[BatchEntry {
                        tokens,
                        slots: &slots,
                        want_output: false,
                    }],
                    cache,
                )
                .unwrap();
            cache.commit(seq, tokens).unwrap();
        };
        append(&mut cache, root, &p);
        let kids: Vec<SeqId> = suffixes
            .iter()
            .map(|suffix| {
                let k = cache.fork(root).unwrap();
                append(&mut cache, k, suffix);
                k
            })
            .collect();
        let slots: Vec<Vec<u32>> = kids
            .iter()
            .map(|&k| {
                cache.reserve(k, 1).unwrap();
                cache.slots(k, 0..cache.len(k) + 1).unwrap()
            })
            .collect();
        let entries: Vec<BatchEntry> = next
            .iter()
            .zip(&slots)
            .map(|(t, s)| BatchEntry {
                tokens: std::slice::from_ref(t),
                slots: s,
                want_output: true,
            })
            .collect();
        let rows = e
            .model
            .forward_batch(&entries, &cache)
            .unwrap()
            .logits
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let argmax = ttc_engine::sampler::argmax;
        for (i, row) in rows.iter().enumerate() {
            let alone = logits_after(e, &[&p, suffixes[i], &next[i..=i]]);
            let max = max_diff(row, &alone);
            let mean = row
                .iter()
                .zip(&alone)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / row.len() as f32;
            if path == cascade.0 {
                assert_eq!(argmax(row), argmax(&alone), "{path}: member {i}");
                assert!(
                    mean < 0.6 && max < 2.5,
                    "{path}: member {i}: group and alone differ by {mean} on average, {max} at most"
                );
            } else {
                assert!(
                    max < 1e-3,
                    "{path}: member {i}: group and alone differ by {max}"
                );
            }
        }
        assert!(
            max_diff(&rows[0], &rows[1]) > 1e-2,
            "{path}: members with different suffixes differ"
        );
    }
}

#[test]
fn a_request_over_the_kv_budget_is_refused_before_it_runs() {
    let e = engine();
    let p = prompt("Hello");
    let per_token = e.config().kv_bytes_per_token();
    let opts = SessionOptions {
        params: SamplingParams::greedy(),
        seed: 0,
        max_tokens: 512,
        stop: vec![],
        ignore_eos: false,
        prefix_cache: false,
    };
    // 64 samples of 512 tokens need ~64 * 512 * 184 KiB: far more than a 100 MiB budget.
    let mut small = ttc_e2e::load_default_engine();
    small.set_kv_budget(100 << 20).unwrap();
    let err = small.session(p.len(), 64, opts.clone()).err().unwrap();
    assert!(matches!(err, EngineError::OverKvBudget { .. }), "{err}");
    let width = small.max_width_for(p.len(), 512);
    assert!((1..64).contains(&width), "{width}");
    assert!(
        small.session(p.len(), width, opts).is_ok(),
        "the narrower width fits"
    );
    assert!(per_token > 0);
}

#[test]
fn a_failed_step_changes_nothing() {
    let p = prompt("Say hello.");
    for (path, e) in engines_on_both_compute_paths() {
        let mut s = session(e, 2, SamplingParams::greedy(), 8, p.len());
        let root = s.prefill(&p).unwrap();
        let kids = s.fork(root, 2).unwrap();
        s.free(root);
        // Listing a sequence twice, or an unknown one, is refused before anything is sampled.
        assert!(s.step(&[kids[0], kids[0]]).is_err(), "{path}");
        assert!(s.step(&[kids[0], SeqId(999)]).is_err(), "{path}");
        assert_eq!(s.generated(kids[0]).unwrap().len(), 0, "{path}");
        assert!(
            s.logits(kids[0]).unwrap().is_some(),
            "{path}: the pending logits are still there"
        );
        s.step(&kids).unwrap();
        assert_eq!(
            s.generated(kids[0]).unwrap(),
            s.generated(kids[1]).unwrap(),
            "{path}"
        );
    }
}

/// ttc's fused CPU attention block (rope, KV writes and grouped attention in kernels) computes
/// what candle's tensor path computes, up to this model's rounding noise: every layer
/// re-quantizes its input to 8 bits, so a last-bit difference that moves one value across a
/// rounding boundary is amplified. Measured: the summation order alone (AVX2 vs AVX-512 matmul
/// kernels, both exact to rounding) moves these logits by 0.40 on average (at most 1.25); the
/// two attention paths differ by 0.20 on average (at most 0.85). A wrong rope, mask or head
/// mapping moves them by whole units and changes the top token.
#[test]
fn fused_cpu_attention_agrees_with_the_tensor_path() {
    let mut tensor_path = ttc_e2e::load_default_engine();
    tensor_path
        .model
        .set_attention_backend(ttc_engine::models::AttentionBackend::Tensor)
        .unwrap();
    let p = prompt("Please explain in detail how a bicycle works: the frame, the wheels, the chain, the gears and the brakes, and why a moving bicycle stays upright.");
    assert!(p.len() > 40, "prefill rows past the first tile share it");
    let (prefix, tail) = p.split_at(p.len() - 3);
    let fused = logits_on(engine(), prefix, tail);
    let plain = logits_on(&tensor_path, prefix, tail);
    let diffs: Vec<f32> = fused
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let max = diffs.iter().fold(0.0f32, |m, &d| m.max(d));
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let argmax = ttc_engine::sampler::argmax;
    assert_eq!(
        argmax(&fused),
        argmax(&plain),
        "the two paths pick different tokens"
    );
    assert!(
        mean < 0.6 && max < 2.5,
        "fused and tensor attention differ by {mean} on average, {max} at most"
    );
}
