//! Every fast kernel against its reference, on every instruction set this CPU has; the
//! reference against candle's independent dequantization and against f32 arithmetic.
//! Weights are real GGML blocks, made by candle's quantizers from random values.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ttc_kernels::attention::{attend_on, attend_reference, AttentionDims};
use ttc_kernels::math::{exp, log_sum_exp};
use ttc_kernels::{reference, Isa, QMatrix, QuantizedActs, WeightType};

fn ggml(ty: WeightType) -> GgmlDType {
    match ty {
        WeightType::Q4_0 => GgmlDType::Q4_0,
        WeightType::Q4_1 => GgmlDType::Q4_1,
        WeightType::Q8_0 => GgmlDType::Q8_0,
        WeightType::Q4K => GgmlDType::Q4K,
        WeightType::Q6K => GgmlDType::Q6K,
    }
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    // Uneven magnitudes, so scales differ from block to block.
    (0..n)
        .map(|i| rng.random_range(-1.0f32..1.0) * (1.0 + (i % 7) as f32))
        .collect()
}

/// A random `rows x cols` matrix quantized by candle: its GGUF bytes and candle's
/// dequantization of them.
fn blocks(rng: &mut ChaCha8Rng, ty: WeightType, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let w = Tensor::from_vec(random(rng, rows * cols), (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, ggml(ty)).unwrap();
    let deq = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (q.data().unwrap().into_owned(), deq)
}

/// As [`blocks`], as a matrix laid out for this CPU's best kernels.
fn matrix(rng: &mut ChaCha8Rng, ty: WeightType, rows: usize, cols: usize) -> (QMatrix, Vec<f32>) {
    let (bytes, deq) = blocks(rng, ty, rows, cols);
    (QMatrix::new(ty, rows, cols, bytes).unwrap(), deq)
}

/// Widths per format: SmolLM2's 576 and 1536 (not multiples of 256) for 32-blocks; one and
/// three super-blocks for the K formats.
fn widths(ty: WeightType) -> &'static [usize] {
    match ty.block_len() {
        32 => &[32, 96, 576, 1536],
        _ => &[256, 768],
    }
}

#[test]
fn reference_dequantization_matches_candle() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for ty in WeightType::ALL {
        for &k in widths(ty) {
            let (bytes, deq) = blocks(&mut rng, ty, 3, k);
            // Every layout (packed ones too) gives back the same weights.
            for isa in Isa::available() {
                let w = QMatrix::new_for(isa, ty, 3, k, bytes.clone()).unwrap();
                let mut row = vec![0f32; k];
                for j in 0..3 {
                    assert_eq!(
                        &*w.ggml_row(j),
                        &bytes[j * ty.row_bytes(k)..(j + 1) * ty.row_bytes(k)]
                    );
                    w.dequantize_row(j, &mut row);
                    for (i, (a, b)) in row.iter().zip(&deq[j * k..]).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                            "{} k={k} row {j} [{i}]: {a} vs candle {b}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }
}

/// The reference integer dot product equals the f32 dot of dequantized weights with the
/// dequantized activations (the same numbers, summed differently).
#[test]
fn reference_dot_equals_dequantized_arithmetic() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for ty in WeightType::ALL {
        for &k in widths(ty) {
            let (w, deq) = matrix(&mut rng, ty, 4, k);
            let x = random(&mut rng, 2 * k);
            let mut acts = QuantizedActs::default();
            acts.quantize(ty.activation_format(), &x, 2, k);
            let xq = acts.dequantize();
            for j in 0..4 {
                for i in 0..2 {
                    let got = reference::dot_row(ty, &w.ggml_row(j), &acts, i);
                    let terms: Vec<f32> = deq[j * k..(j + 1) * k]
                        .iter()
                        .zip(&xq[i * k..(i + 1) * k])
                        .map(|(a, b)| a * b)
                        .collect();
                    let want: f32 = terms.iter().sum();
                    let scale: f32 = terms.iter().map(|t| t.abs()).sum();
                    // Q4_1's min term uses the activation's f16-rounded `d * sum(q)`, as
                    // llama.cpp does: that rounding (2^-11) shows here.
                    let tol = if ty == WeightType::Q4_1 { 2e-3 } else { 1e-4 };
                    assert!(
                        (got - want).abs() <= tol * scale,
                        "{} k={k}: {got} vs {want}",
                        ty.name()
                    );
                }
            }
            // And it is close to the unquantized product (activation rounding only).
            let exact: f32 = deq[..k].iter().zip(&x[..k]).map(|(a, b)| a * b).sum();
            let bound: f32 = deq[..k].iter().map(|a| a.abs()).sum::<f32>()
                * x[..k].iter().fold(0f32, |m, v| m.max(v.abs()))
                / 127.0;
            let got = reference::dot_row(ty, &w.ggml_row(0), &acts, 0);
            assert!(
                (got - exact).abs() <= bound,
                "{}: {got} vs f32 {exact} (bound {bound})",
                ty.name()
            );
        }
    }
}

#[test]
fn every_kernel_matches_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let isas = Isa::available();
    eprintln!(
        "instruction sets: {:?}",
        isas.iter().map(|i| i.name()).collect::<Vec<_>>()
    );
    for ty in WeightType::ALL {
        for &k in widths(ty) {
            // Odd output counts; row counts that leave every tail (1..=4) and cross a panel.
            let n = 37;
            let (bytes, _) = blocks(&mut rng, ty, n, k);
            let mats: Vec<QMatrix> = isas
                .iter()
                .map(|&isa| QMatrix::new_for(isa, ty, n, k, bytes.clone()).unwrap())
                .collect();
            let w = &mats[0];
            for m in [1, 2, 3, 4, 5, 7, 16, 70] {
                let x = random(&mut rng, m * k);
                let mut want = vec![0f32; m * n];
                w.matmul_reference(&x, m, &mut want).unwrap();
                // Kernels sum in another order: errors are relative to the outputs' size.
                let tol = 2e-6 * want.iter().fold(1f32, |a, b| a.max(b.abs()));
                for (w, isa) in mats.iter().zip(&isas) {
                    let mut got = vec![f32::NAN; m * n];
                    w.matmul(&x, m, &mut got).unwrap();
                    for (idx, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= tol,
                            "{} {} k={k} m={m} at {idx}: {a} vs reference {b}",
                            isa.name(),
                            ty.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn large_matmul_splits_across_threads_correctly() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (w, _) = matrix(&mut rng, WeightType::Q4_1, 1000, 576);
    let x = random(&mut rng, 9 * 576);
    let (mut a, mut b) = (vec![0f32; 9 * 1000], vec![0f32; 9 * 1000]);
    w.matmul_reference(&x, 9, &mut a).unwrap();
    w.matmul(&x, 9, &mut b).unwrap();
    let tol = 2e-6 * a.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tol, "at {i}: {y} vs reference {x}");
    }
}

#[test]
fn stacked_matrices_multiply_as_their_parts() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (q, _) = matrix(&mut rng, WeightType::Q4_1, 12, 160);
    let (k, _) = matrix(&mut rng, WeightType::Q4_1, 5, 160);
    let qk = QMatrix::stack(&[&q, &k]).unwrap();
    let x = random(&mut rng, 3 * 160);
    let (mut a, mut b, mut c) = (vec![0f32; 3 * 12], vec![0f32; 3 * 5], vec![0f32; 3 * 17]);
    q.matmul(&x, 3, &mut a).unwrap();
    k.matmul(&x, 3, &mut b).unwrap();
    qk.matmul(&x, 3, &mut c).unwrap();
    for i in 0..3 {
        assert_eq!(&c[i * 17..i * 17 + 12], &a[i * 12..(i + 1) * 12]);
        assert_eq!(&c[i * 17 + 12..(i + 1) * 17], &b[i * 5..(i + 1) * 5]);
    }
    let (other, _) = matrix(&mut rng, WeightType::Q8_0, 2, 160);
    assert!(QMatrix::stack(&[&q, &other]).is_err());
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    // Shapes whose byte count wraps around, or that have no rows, are not small matrices.
    let wraps = usize::MAX / WeightType::Q8_0.row_bytes(32) + 2;
    assert!(
        QMatrix::new(WeightType::Q8_0, wraps, 32, vec![0; 34]).is_err(),
        "wrapping shape"
    );
    assert!(
        QMatrix::new(WeightType::Q8_0, 0, 32, vec![]).is_err(),
        "no rows"
    );
    assert!(
        QMatrix::new(WeightType::Q4_1, 2, 48, vec![0; 60]).is_err(),
        "48 is not whole blocks"
    );
    assert!(
        QMatrix::new(WeightType::Q4K, 1, 576, vec![0; 324]).is_err(),
        "576 is not whole super-blocks"
    );
    assert!(
        QMatrix::new(WeightType::Q8_0, 2, 32, vec![0; 33]).is_err(),
        "wrong byte count"
    );
    let w = QMatrix::new(WeightType::Q8_0, 2, 32, vec![0; 68]).unwrap();
    assert!(w.matmul(&[0.0; 31], 1, &mut [0.0; 2]).is_err());
    assert!(w.matmul(&[0.0; 32], 1, &mut [0.0; 3]).is_err());
}

#[test]
fn fast_exp_is_accurate_where_softmax_uses_it() {
    for i in 0..=100_000 {
        let x = -87.0 + 87.0 * i as f32 / 100_000.0;
        let (got, want) = (exp(x), x.exp());
        assert!(
            (got - want).abs() <= 4e-7 * want,
            "exp({x}) = {got}, want {want}"
        );
    }
    assert_eq!(exp(0.0), 1.0);
    let logits: Vec<f32> = (0..49_155)
        .map(|i| ((i * 7919) % 2000) as f32 / 100.0 - 10.0)
        .collect();
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let want = (logits
        .iter()
        .map(|&l| ((l - max) as f64).exp())
        .sum::<f64>()
        .ln()
        + max as f64) as f32;
    assert!(
        (log_sum_exp(&logits) - want).abs() < 1e-5,
        "{} vs {want}",
        log_sum_exp(&logits)
    );
    assert!(exp(f32::NEG_INFINITY) < 1e-37);
}

/// Decode rows sharing a prefix, and prefill rows of one sequence seeing 1..n of its slots,
/// with grouped-query heads (9 over 3).
#[test]
fn paged_attention_matches_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for (dims, pool_rows) in [
        (
            AttentionDims {
                n_heads: 9,
                n_kv_heads: 3,
                head_dim: 64,
            },
            300,
        ),
        (
            AttentionDims {
                n_heads: 4,
                n_kv_heads: 4,
                head_dim: 20,
            },
            50,
        ),
    ] {
        let kvd = dims.n_kv_heads * dims.head_dim;
        let k: Vec<f32> = random(&mut rng, pool_rows * kvd);
        let v: Vec<f32> = random(&mut rng, pool_rows * kvd);
        let mut slot_lists: Vec<Vec<u32>> = Vec::new();
        let prefix: Vec<u32> = (0..40)
            .map(|_| rng.random_range(0..pool_rows as u32))
            .collect();
        for len in [1usize, 3, 33, 70] {
            let mut s = prefix.clone();
            s.extend((0..len).map(|_| rng.random_range(0..pool_rows as u32)));
            slot_lists.push(s);
        }
        // Prefill rows: short ones, and a run long enough to be attended as one group.
        for n in (1..=5).chain(17..=30) {
            slot_lists.push(prefix[..n].to_vec());
        }
        let rows: Vec<&[u32]> = slot_lists.iter().map(|s| s.as_slice()).collect();
        let q = random(&mut rng, rows.len() * dims.n_heads * dims.head_dim);
        let scale = 1.0 / (dims.head_dim as f32).sqrt();
        let mut want = vec![0f32; q.len()];
        attend_reference(dims, scale, &q, &k, &v, &rows, &mut want).unwrap();
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; q.len()];
            attend_on(isa, dims, scale, &q, &k, &v, &rows, true, &mut got).unwrap();
            // Outputs are averages of values (up to 7 here): errors are relative to those.
            let tol = 3e-6 * v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!(
                "{} {dims:?}: worst {worst:e} (tolerance {tol:e})",
                isa.name()
            );
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= tol,
                    "{} {dims:?} at {i}: {a} vs {b}",
                    isa.name()
                );
            }
        }
        let outside = [pool_rows as u32];
        let bad: Vec<&[u32]> = vec![&outside];
        let mut out = vec![0f32; dims.n_heads * dims.head_dim];
        assert!(attend_on(
            Isa::Portable,
            dims,
            scale,
            &q[..out.len()],
            &k,
            &v,
            &bad,
            true,
            &mut out
        )
        .is_err());
    }
}

/// A row's attention is bitwise the same alone and in a batch whose rows share its prefix
/// (the engine's batched decoding promises exactly that).
#[test]
fn attention_of_a_row_does_not_depend_on_its_batch() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let dims = AttentionDims {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let pool_rows = 400;
    let k = random(&mut rng, pool_rows * 192);
    let v = random(&mut rng, pool_rows * 192);
    let prefix: Vec<u32> = (0..77).collect();
    let lists: Vec<Vec<u32>> = (0..6u32)
        .map(|r| {
            prefix
                .iter()
                .copied()
                .chain(100 + 40 * r..100 + 40 * r + 5 + 3 * r)
                .collect()
        })
        .collect();
    let rows: Vec<&[u32]> = lists.iter().map(|s| s.as_slice()).collect();
    let q = random(&mut rng, rows.len() * 576);
    for isa in Isa::available() {
        let mut batch = vec![0f32; q.len()];
        attend_on(isa, dims, 0.125, &q, &k, &v, &rows, true, &mut batch).unwrap();
        let mut unshared = vec![0f32; q.len()];
        attend_on(isa, dims, 0.125, &q, &k, &v, &rows, false, &mut unshared).unwrap();
        assert_eq!(
            unshared,
            batch,
            "{}: sharing prefixes changes nothing",
            isa.name()
        );
        for r in 0..rows.len() {
            let mut alone = vec![0f32; 576];
            attend_on(
                isa,
                dims,
                0.125,
                &q[r * 576..(r + 1) * 576],
                &k,
                &v,
                &rows[r..r + 1],
                true,
                &mut alone,
            )
            .unwrap();
            assert_eq!(
                alone,
                batch[r * 576..(r + 1) * 576],
                "{} row {r}",
                isa.name()
            );
        }
    }
}

/// Likewise for a matmul row: the same bits at any batch size.
#[test]
fn matmul_of_a_row_does_not_depend_on_its_batch() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for ty in WeightType::ALL {
        let k = widths(ty)[1];
        let (bytes, _) = blocks(&mut rng, ty, 19, k);
        for isa in Isa::available() {
            let w = QMatrix::new_for(isa, ty, 19, k, bytes.clone()).unwrap();
            let x = random(&mut rng, 7 * k);
            let mut batch = vec![0f32; 7 * 19];
            w.matmul(&x, 7, &mut batch).unwrap();
            for r in 0..7 {
                let mut alone = vec![0f32; 19];
                w.matmul(&x[r * k..(r + 1) * k], 1, &mut alone).unwrap();
                assert_eq!(
                    alone,
                    batch[r * 19..(r + 1) * 19],
                    "{} {} row {r}",
                    isa.name(),
                    ty.name()
                );
            }
        }
    }
}

/// Matmuls running at once on the pool (as two sessions do) may steal each other's work
/// while they wait; each must still get its own result.
#[test]
fn concurrent_matmuls_on_one_pool_are_independent() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (w, _) = matrix(&mut rng, WeightType::Q4_1, 700, 576);
    let xs: Vec<Vec<f32>> = (0..2).map(|_| random(&mut rng, 8 * 576)).collect();
    let want: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let mut y = vec![0f32; 8 * 700];
            w.matmul(x, 8, &mut y).unwrap();
            y
        })
        .collect();
    for _ in 0..20 {
        let run = |x: &Vec<f32>| {
            let mut y = vec![0f32; 8 * 700];
            for _ in 0..5 {
                w.matmul(x, 8, &mut y).unwrap();
            }
            y
        };
        let (a, b) = rayon::join(|| run(&xs[0]), || run(&xs[1]));
        assert_eq!(a, want[0]);
        assert_eq!(b, want[1]);
    }
}

/// The code that is merely compiled for each instruction set (no intrinsics of its own) gives
/// the same bits on every one: activation quantization and the softmax helpers.
#[test]
fn quantization_and_softmax_helpers_are_the_same_bits_on_every_isa() {
    use ttc_kernels::math::{exp_into_on, log_sum_exp_on, max_and_sum_on};
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x = random(&mut rng, 70 * 768);
    let (mut want_q8, mut want_q8k) = (QuantizedActs::default(), QuantizedActs::default());
    want_q8.quantize_on(
        Isa::Portable,
        ttc_kernels::ActivationFormat::Q8,
        &x,
        70,
        768,
    );
    want_q8k.quantize_on(
        Isa::Portable,
        ttc_kernels::ActivationFormat::Q8K,
        &x,
        70,
        768,
    );
    let mut want_exp = vec![0f32; x.len()];
    let want_sum = exp_into_on(Isa::Portable, &x, 3.0, 1.25, &mut want_exp);
    for isa in Isa::available() {
        let mut q = QuantizedActs::default();
        q.quantize_on(isa, ttc_kernels::ActivationFormat::Q8, &x, 70, 768);
        assert_eq!(q.dequantize(), want_q8.dequantize(), "{} Q8", isa.name());
        q.quantize_on(isa, ttc_kernels::ActivationFormat::Q8K, &x, 70, 768);
        assert_eq!(q.dequantize(), want_q8k.dequantize(), "{} Q8K", isa.name());
        assert_eq!(
            log_sum_exp_on(isa, &x).to_bits(),
            log_sum_exp_on(Isa::Portable, &x).to_bits(),
            "{}",
            isa.name()
        );
        assert_eq!(
            max_and_sum_on(isa, &x),
            max_and_sum_on(Isa::Portable, &x),
            "{}",
            isa.name()
        );
        let mut e = vec![0f32; x.len()];
        assert_eq!(
            exp_into_on(isa, &x, 3.0, 1.25, &mut e).to_bits(),
            want_sum.to_bits(),
            "{}",
            isa.name()
        );
        assert_eq!(e, want_exp, "{}", isa.name());
    }
}

/// A row count whose products with the matrix's width and height wrap around to the slices'
/// lengths (here 0) is an error, not `m` rows read and written past them.
#[test]
fn matmul_rows_whose_products_wrap_are_errors() {
    let w = QMatrix::new(WeightType::Q8_0, 32, 32, vec![0; 32 * 34]).unwrap();
    let m = usize::MAX / 32 + 1; // m * 32 == 2^64, 0 when wrapped
    assert!(w.matmul(&[], m, &mut []).is_err());
    assert!(w.matmul_reference(&[], m, &mut []).is_err());
}

/// Quantizing refuses a shape whose value count wraps around to `x.len()`.
#[test]
#[should_panic(expected = "activation shape")]
fn quantizing_a_wrapping_shape_panics_before_touching_memory() {
    let mut acts = QuantizedActs::default();
    acts.quantize(
        ttc_kernels::ActivationFormat::Q8,
        &[],
        usize::MAX / 32 + 1,
        32,
    );
}

/// Head counts whose products overflow (as a crafted model file could give) are errors on
/// every instruction set, not offsets that wrap around into the query, output or pools.
#[test]
fn attention_dims_whose_products_overflow_are_errors() {
    let one: &[u32] = &[0];
    let cases = [
        // n_heads * head_dim == 2^64: q_dim wraps to 0, so empty q and out would pass.
        (
            AttentionDims {
                n_heads: usize::MAX / 4 + 1,
                n_kv_heads: 1,
                head_dim: 4,
            },
            vec![one],
            vec![0f32; 4],
        ),
        // kv_dim wraps to 0 as well: empty pools would divide by zero.
        (
            AttentionDims {
                n_heads: usize::MAX / 4 + 1,
                n_kv_heads: usize::MAX / 4 + 1,
                head_dim: 4,
            },
            vec![one],
            vec![],
        ),
        // q_dim is 2^62 without wrapping, but four rows of it wrap to 0.
        (
            AttentionDims {
                n_heads: 1 << 61,
                n_kv_heads: 1,
                head_dim: 2,
            },
            vec![one; 4],
            vec![0f32; 2],
        ),
    ];
    for (dims, rows, pool) in &cases {
        for isa in Isa::available() {
            assert!(
                attend_on(isa, *dims, 1.0, &[], pool, pool, rows, true, &mut []).is_err(),
                "{} {dims:?}",
                isa.name()
            );
        }
        assert!(attend_reference(*dims, 1.0, &[], pool, pool, rows, &mut []).is_err());
    }
}

/// No query rows is nothing to do (it used to divide the threads by zero tasks).
#[test]
fn attention_of_no_rows_is_empty() {
    let dims = AttentionDims {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let pool = vec![0f32; 2 * 16];
    for isa in Isa::available() {
        attend_on(isa, dims, 1.0, &[], &pool, &pool, &[], true, &mut []).unwrap();
    }
}

/// Rotation checks its shapes once per call: a rotary width past the head, too few angles, or
/// a partial head are errors (the engine checks `rope_dim <= head_dim` when it reads a model,
/// but the kernel does not rely on that).
#[test]
fn rope_shapes_are_checked() {
    use ttc_kernels::rope::{rotate_heads, try_rotate_heads, RopeLayout};
    let (cos, sin) = ([1f32; 8], [0f32; 8]);
    for layout in [RopeLayout::Interleaved, RopeLayout::Halves] {
        let mut x = [1f32; 16];
        assert!(try_rotate_heads(&mut x, 8, 16, layout, &cos, &sin).is_err());
        assert!(try_rotate_heads(&mut x, 8, 8, layout, &cos[..3], &sin).is_err());
        assert!(try_rotate_heads(&mut x, 8, 8, layout, &cos, &sin[..3]).is_err());
        assert!(try_rotate_heads(&mut x[..12], 8, 8, layout, &cos, &sin).is_err());
        assert!(try_rotate_heads(&mut x, 0, 0, layout, &cos, &sin).is_err());
        assert_eq!(x, [1f32; 16], "refused calls leave x as it was");
        try_rotate_heads(&mut x, 8, 8, layout, &cos, &sin).unwrap();
        assert_eq!(x, [1f32; 16], "angle 0 is the identity");
        let mut partial = [1f32; 16];
        rotate_heads(&mut partial, 8, 4, layout, &cos, &sin);
    }
    let refused = std::panic::catch_unwind(|| {
        rotate_heads(&mut [0f32; 8], 4, 8, RopeLayout::Halves, &cos, &sin);
    });
    assert!(refused.is_err(), "rope_dim > head_dim panics");
}

/// A task that panics inside a team's section neither hangs the section (a follower's
/// panic) nor lets the leader unwind past data that other tasks are still using (the
/// leader's): the caller's frame outlives every task that started, and the panic comes out.
#[test]
fn a_panicking_team_task_propagates_after_the_others_finish() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use ttc_kernels::threads::{on_pool, parallel_for};
    struct Frame(Arc<AtomicBool>);
    impl Drop for Frame {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    for panicking in [0, 5] {
        let dropped = Arc::new(AtomicBool::new(false));
        let (ran_after_drop, started) = (AtomicBool::new(false), AtomicUsize::new(0));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on_pool(|| {
                let _frame = Frame(dropped.clone());
                parallel_for(64, &|i| {
                    started.fetch_add(1, Ordering::SeqCst);
                    if i == panicking {
                        panic!("task {i}");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    if dropped.load(Ordering::SeqCst) {
                        ran_after_drop.store(true, Ordering::SeqCst);
                    }
                });
            })
        }));
        assert!(result.is_err(), "the panic reaches the caller");
        assert!(started.load(Ordering::SeqCst) > panicking);
        assert!(
            !ran_after_drop.load(Ordering::SeqCst),
            "a task ran after the caller's frame was dropped"
        );
    }
}
