//! Where the instruction sets' kernels part, on the real model: every available set runs the
//! golden prompts teacher-forced on llama.cpp's greedy tokens, and this prints
//! - per set: how often llama.cpp's token is also our argmax, and the largest gap where not;
//! - per set against the portable reference: the largest logit difference over all steps;
//! - at one step (by default the closest call of the golden set), layer by layer, how far each
//!   set's intermediate results are from the reference's (relative L2 of the last row);
//! - op by op: each weight matrix of each layer multiplied on every set with the *same* input
//!   (the reference's), against the reference kernel: what one op alone contributes.
//!
//! cargo run --release -p ttc-e2e --example kernel_divergence [-- QUESTION_INDEX STEP]

#![allow(clippy::needless_range_loop)] // logits[isa][question][step], indexed in parallel

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use ttc_e2e::golden::{teacher_forced_logits, REFERENCES};
use ttc_engine::kernels::Isa;
use ttc_engine::models::llama::LayerObserver;

type Trace = HashMap<(usize, String), Vec<f32>>;

fn last_row(t: &Tensor) -> Vec<f32> {
    let (n, _) = t.dims2().unwrap();
    t.narrow(0, n - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The largest change, from `b` to `a`, in the logit difference of two of `b`'s five leading
/// candidates (and `extra`): if it is at most `d` everywhere, whichever token `b` prefers is
/// within `d` of `a`'s argmax.
fn margin_shift(a: &[f32], b: &[f32], extra: u32) -> f32 {
    let mut order: Vec<usize> = (0..b.len()).collect();
    order.select_nth_unstable_by(5, |&x, &y| b[y].total_cmp(&b[x]));
    let mut top: Vec<usize> = order[..5].to_vec();
    top.push(extra as usize);
    let mut worst = 0f32;
    for &i in &top {
        for &j in &top {
            worst = worst.max(((a[i] - a[j]) - (b[i] - b[j])).abs());
        }
    }
    worst
}

fn main() {
    let mut args = std::env::args().skip(1);
    let trace_q: usize = args
        .next()
        .map(|a| a.parse().expect("question index"))
        .unwrap_or(2);
    let trace_step: usize = args.next().map(|a| a.parse().expect("step")).unwrap_or(27);
    let isas = Isa::available();
    println!(
        "kernels on this CPU: {}",
        isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
    );
    let mut logits: Vec<Vec<Vec<Vec<f32>>>> = Vec::new();
    let mut traces: Vec<Trace> = Vec::new();
    let mut eos = 0;
    for &isa in &isas {
        let e = ttc_e2e::load_default_engine_with_kernels(isa);
        eos = e.tokenizer.eos_ids[0];
        let mut trace = Trace::new();
        let mut per_q = Vec::new();
        for (qi, r) in REFERENCES.iter().enumerate() {
            let mut observe = |l: usize, point: &str, t: &Tensor| {
                trace.insert((l, point.to_string()), last_row(t));
            };
            let hook: Option<(usize, &mut LayerObserver)> = if qi == trace_q {
                Some((trace_step, &mut observe))
            } else {
                None
            };
            per_q.push(teacher_forced_logits(&e, r, hook));
        }
        logits.push(per_q);
        traces.push(trace);
    }

    println!("\n## Against llama.cpp's greedy tokens (teacher forced)");
    println!(
        "{:<12} {:>10} {:>10}  where",
        "kernels", "exact", "worst gap"
    );
    for (ii, isa) in isas.iter().enumerate() {
        let (mut steps, mut exact, mut worst, mut at) = (0, 0, 0f32, (0, 0));
        for (qi, r) in REFERENCES.iter().enumerate() {
            for (s, (l, &want)) in logits[ii][qi].iter().zip(&r.expected(eos)).enumerate() {
                let ours = ttc_engine::sampler::argmax(l);
                let gap = l[ours as usize] - l[want as usize];
                steps += 1;
                exact += usize::from(ours == want);
                if gap > worst {
                    (worst, at) = (gap, (qi, s));
                }
            }
        }
        println!(
            "{:<12} {:>6}/{:<3} {:>10.4}  question {} step {}",
            isa.name(),
            exact,
            steps,
            worst,
            at.0,
            at.1
        );
    }

    println!(
        "\n## Against the portable reference, over all {} steps",
        logits[0].iter().map(Vec::len).sum::<usize>()
    );
    println!(
        "{:<12} {:>14} {:>14} {:>16}",
        "kernels", "max |dlogit|", "p99 |dlogit|", "max rel L2"
    );
    for (ii, isa) in isas.iter().enumerate().skip(1) {
        let mut per_step: Vec<f32> = Vec::new();
        let mut worst_rel = 0f64;
        for qi in 0..REFERENCES.len() {
            for (a, b) in logits[ii][qi].iter().zip(&logits[0][qi]) {
                per_step.push(max_abs_diff(a, b));
                worst_rel = worst_rel.max(rel_l2(a, b));
            }
        }
        per_step.sort_by(f32::total_cmp);
        let p99 = per_step[(per_step.len() * 99 / 100).min(per_step.len() - 1)];
        println!(
            "{:<12} {:>14.4} {:>14.4} {:>16.2e}",
            isa.name(),
            per_step.last().unwrap(),
            p99,
            worst_rel
        );
    }
    // Between every pair, not only against the reference.
    for a in 1..isas.len() {
        for b in a + 1..isas.len() {
            let m = (0..REFERENCES.len())
                .flat_map(|qi| {
                    logits[a][qi]
                        .iter()
                        .zip(&logits[b][qi])
                        .map(|(x, y)| max_abs_diff(x, y))
                        .collect::<Vec<_>>()
                })
                .fold(0f32, f32::max);
            println!(
                "{} against {}: max |dlogit| {m:.4}",
                isas[a].name(),
                isas[b].name()
            );
        }
    }

    println!("\n## Margin shifts: how much the logit difference of two leading candidates moves");
    println!("(max over steps of |(a[i] - a[j]) - (b[i] - b[j])|, i, j among b's top 5 and llama.cpp's token)");
    for a in 0..isas.len() {
        for b in 0..isas.len() {
            if a == b {
                continue;
            }
            let (mut worst, mut at) = (0f32, (0, 0));
            for (qi, r) in REFERENCES.iter().enumerate() {
                let expected = r.expected(eos);
                for (s, (la, lb)) in logits[a][qi].iter().zip(&logits[b][qi]).enumerate() {
                    let shift = margin_shift(la, lb, expected[s]);
                    if shift > worst {
                        (worst, at) = (shift, (qi, s));
                    }
                }
            }
            println!(
                "{:<12} vs {:<12} {worst:.4}  (question {} step {})",
                isas[a].name(),
                isas[b].name(),
                at.0,
                at.1
            );
        }
    }

    println!(
        "\n## One implementation's choice under another: a[argmax a] - a[argmax b], worst step"
    );
    for a in 0..isas.len() {
        for b in 0..isas.len() {
            if a == b {
                continue;
            }
            let (mut worst, mut at, mut differ) = (0f32, (0, 0), 0);
            for qi in 0..REFERENCES.len() {
                for (s, (la, lb)) in logits[a][qi].iter().zip(&logits[b][qi]).enumerate() {
                    let (ta, tb) = (
                        ttc_engine::sampler::argmax(la),
                        ttc_engine::sampler::argmax(lb),
                    );
                    let gap = la[ta as usize] - la[tb as usize];
                    differ += usize::from(ta != tb);
                    if gap > worst {
                        (worst, at) = (gap, (qi, s));
                    }
                }
            }
            println!("{:<12} choosing as {:<12} {differ:>3} steps differ, worst gap {worst:.4} (question {} step {})", isas[a].name(), isas[b].name(), at.0, at.1);
        }
    }

    let r = &REFERENCES[trace_q];
    println!(
        "\n## Layer by layer: {:?}, step {trace_step}, relative L2 to the reference (last row)",
        r.question
    );
    let points = ["attn_norm", "attn_out", "ffn_norm", "ffn_out", "residual"];
    let layers = traces[0].keys().map(|k| k.0).max().map_or(0, |m| m + 1);
    print!("{:<6}{:<10}", "layer", "point");
    for isa in &isas[1..] {
        print!(" {:>12}", isa.name());
    }
    println!();
    for l in 0..layers {
        for p in points {
            if p != "residual" && l % 6 != 0 && l != layers - 1 {
                continue; // the residual every layer, the rest every sixth
            }
            print!("{l:<6}{p:<10}");
            let base = &traces[0][&(l, p.to_string())];
            for t in &traces[1..] {
                print!(" {:>12.2e}", rel_l2(&t[&(l, p.to_string())], base));
            }
            println!();
        }
    }
    let (qi, s) = (trace_q, trace_step);
    let eos_or = |i: usize| r.expected(eos)[i];
    let want = eos_or(s);
    for (ii, isa) in isas.iter().enumerate() {
        let l = &logits[ii][qi][s];
        let ours = ttc_engine::sampler::argmax(l);
        println!(
            "{}: logit of llama.cpp's {want} = {:.4}, of our argmax {ours} = {:.4}",
            isa.name(),
            l[want as usize],
            l[ours as usize]
        );
    }

    println!("\n## Op by op: each layer's matmuls on the reference's own inputs at that step");
    println!("(max |y - y_ref| / max |y_ref| over the output row, worst layer)");
    let gguf = ttc_engine::gguf::GgufModel::open(&ttc_e2e::default_model().paths).unwrap();
    let ops: [(&str, &str); 7] = [
        ("attn_q", "attn_norm"),
        ("attn_k", "attn_norm"),
        ("attn_v", "attn_norm"),
        ("ffn_gate", "ffn_norm"),
        ("ffn_up", "ffn_norm"),
        ("attn_output", ""),
        ("ffn_down", ""),
    ];
    for (w, input) in ops {
        if input.is_empty() {
            continue; // their inputs (attention output, SwiGLU) are not among the traced points
        }
        let mut worst = vec![0f32; isas.len()];
        let mut ty = String::new();
        for l in 0..layers {
            let t = gguf
                .tensor(&format!("blk.{l}.{w}.weight"), &Device::Cpu)
                .unwrap();
            ty = format!("{:?}", t.dtype());
            let x = &traces[0][&(l, input.to_string())];
            let mut outs = Vec::new();
            for &isa in &isas {
                let m = ttc_engine::kernel_ops::qmatrix(&t, isa)
                    .unwrap()
                    .expect("a kernel format");
                let mut y = vec![0f32; m.rows()];
                m.matmul(x, 1, &mut y).unwrap();
                outs.push(y);
            }
            let scale = outs[0].iter().fold(0f32, |a, v| a.max(v.abs()));
            for (ii, y) in outs.iter().enumerate() {
                worst[ii] = worst[ii].max(max_abs_diff(y, &outs[0]) / scale);
            }
        }
        print!("{w:<12} ({ty:<5})");
        for (ii, isa) in isas.iter().enumerate().skip(1) {
            print!("  {}: {:.2e}", isa.name(), worst[ii]);
        }
        println!();
    }
}
