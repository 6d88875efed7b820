//! Each kernel beside its reference, on SmolLM2-135M's shapes: the FFN up projection
//! (1536 x 576, Q4_1), the tied output head (49152 x 576, Q8_0, one row), a Q4_K and a Q6_K
//! matrix, and attention of 16 decode rows over a 160-token context with 3 KV heads.
//! `cargo bench -p ttc-kernels`; `TTC_KERNELS=avx2` caps the dispatched set.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ttc_kernels::attention::{attend_on, attend_reference, AttentionDims};
use ttc_kernels::{Isa, QMatrix, WeightType};

fn matrix(isa: Isa, ty: WeightType, rows: usize, cols: usize) -> QMatrix {
    let dtype = match ty {
        WeightType::Q4_0 => GgmlDType::Q4_0,
        WeightType::Q4_1 => GgmlDType::Q4_1,
        WeightType::Q8_0 => GgmlDType::Q8_0,
        WeightType::Q4K => GgmlDType::Q4K,
        WeightType::Q6K => GgmlDType::Q6K,
    };
    let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    QMatrix::new_for(isa, ty, rows, cols, q.data().unwrap().into_owned()).unwrap()
}

fn matmul(c: &mut Criterion) {
    let shapes = [
        (WeightType::Q4_1, 1536, 576, &[1usize, 4, 16, 128][..]),
        (WeightType::Q8_0, 49152, 576, &[1][..]),
        (WeightType::Q4K, 1536, 1536, &[1, 16, 128][..]),
        (WeightType::Q6K, 1536, 1536, &[1, 16, 128][..]),
    ];
    for (ty, n, k, ms) in shapes {
        let mats: Vec<QMatrix> = Isa::available()
            .into_iter()
            .map(|isa| matrix(isa, ty, n, k))
            .collect();
        let mut g = c.benchmark_group(format!("matmul_{}_{n}x{k}", ty.name()));
        g.sample_size(20);
        for &m in ms {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut y = vec![0f32; m * n];
            g.throughput(Throughput::Elements((m * n * k) as u64));
            if m <= 4 {
                g.bench_with_input(BenchmarkId::new("reference", m), &m, |b, &m| {
                    b.iter(|| mats[0].matmul_reference(&x, m, &mut y).unwrap())
                });
            }
            for w in &mats {
                g.bench_with_input(BenchmarkId::new(w.isa().name(), m), &m, |b, &m| {
                    b.iter(|| w.matmul(&x, m, &mut y).unwrap())
                });
            }
        }
        g.finish();
    }
}

fn attention(c: &mut Criterion) {
    let dims = AttentionDims {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let (ctx, width) = (160usize, 16usize);
    let pool_rows = ctx * width;
    let kv: Vec<f32> = (0..pool_rows * 192)
        .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let q: Vec<f32> = (0..width * 576)
        .map(|i| ((i * 17) % 89) as f32 / 89.0 - 0.5)
        .collect();
    // Shared 128-token prefix, then each row's own 32 slots.
    let slots: Vec<Vec<u32>> = (0..width)
        .map(|r| {
            (0..128u32)
                .chain((0..32u32).map(|j| 128 + (r as u32) * 32 + j))
                .collect()
        })
        .collect();
    let rows: Vec<&[u32]> = slots.iter().map(|s| s.as_slice()).collect();
    let mut out = vec![0f32; width * 576];
    let mut g = c.benchmark_group("attention_16x160");
    g.sample_size(20);
    g.bench_function("reference", |b| {
        b.iter(|| attend_reference(dims, 0.125, &q, &kv, &kv, &rows, &mut out).unwrap())
    });
    for isa in [Isa::Portable, *Isa::available().last().unwrap()] {
        g.bench_function(isa.name(), |b| {
            b.iter(|| attend_on(isa, dims, 0.125, &q, &kv, &kv, &rows, true, &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, matmul, attention);
criterion_main!(benches);
