//! ttc's own CPU kernels: the engine's hot path.
//!
//! - [`QMatrix`]: quantized matmul over GGML block formats (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) with
//!   activations quantized to 8 bits, tiled so that one weight block serves up to four rows.
//! - [`attention`]: fused attention of query rows over a paged KV pool, grouped-query aware,
//!   reading keys and values in place through each row's slot list.
//! - Kernels are chosen at run time ([`Isa`]): AVX-512 VNNI, AVX-VNNI, AVX2, or the portable
//!   reference. Each fast kernel sits beside a plain reference ([`reference`],
//!   [`attention::attend_reference`]) that the tests compare it with.
//! - One thread pool ([`threads`]).

// Register tiles and lanes are indexed by row and lane number on purpose.
#![allow(clippy::needless_range_loop)]

pub mod activations;
pub mod attention;
pub mod dispatch;
pub mod formats;
pub mod math;
pub mod matmul;
mod packed;
pub mod reference;
pub mod rope;
pub mod threads;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activations::QuantizedActs;
pub use dispatch::Isa;
pub use formats::{ActivationFormat, WeightType};
pub use matmul::QMatrix;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{0}")]
    Shape(String),
    #[error("{0}")]
    Unsupported(String),
}
