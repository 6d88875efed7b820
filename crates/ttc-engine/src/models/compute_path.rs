//! Which code runs a model's forward pass: ttc's CPU kernels, or candle operations end to end
//! (the tensor path). CUDA and Metal always take the tensor path; the CPU takes it on request
//! (`TTC_COMPUTE_PATH=tensor`, or [`ComputePath::Tensor`] when loading), so that the code a GPU
//! runs is tested on every machine, CI's included.

use ttc_kernels::Isa;

use crate::error::{EngineError, Result};

/// The environment variable that puts the CPU on the tensor path.
pub const COMPUTE_PATH_ENV: &str = "TTC_COMPUTE_PATH";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputePath {
    /// ttc's kernels (`ttc-kernels`) for this instruction set: quantized matmuls of the
    /// formats they cover (stacked Q/K/V and gate/up projections) and the fused attention
    /// block. On the CPU only; elsewhere a model loaded so takes the tensor path.
    Kernels(Isa),
    /// candle operations: candle's quantized matmul for every weight, attention over the
    /// paged pool in tensor operations (KV writes by scatter through the block table, cascade
    /// attention over shared prefixes). What CUDA and Metal run.
    Tensor,
}

impl ComputePath {
    /// The CPU's default: `TTC_COMPUTE_PATH` when set (`kernels` or `tensor`), else ttc's
    /// kernels for [`Isa::active`] (the best this CPU has, capped by `TTC_KERNELS`).
    pub fn from_env() -> Result<Self> {
        match std::env::var(COMPUTE_PATH_ENV) {
            Ok(v) => Self::from_name(&v),
            Err(_) => Ok(Self::Kernels(Isa::active())),
        }
    }

    /// `kernels` (at [`Isa::active`]) or `tensor`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "kernels" => Ok(Self::Kernels(Isa::active())),
            "tensor" => Ok(Self::Tensor),
            other => Err(EngineError::InvalidArgument(format!(
                "{COMPUTE_PATH_ENV}={other}: expected 'kernels' or 'tensor'"
            ))),
        }
    }

    /// The kernels' instruction set, on the kernel path.
    pub fn kernels(self) -> Option<Isa> {
        match self {
            Self::Kernels(isa) => Some(isa),
            Self::Tensor => None,
        }
    }

    /// `kernels (avx512-vnni)` or `tensor`: for reports.
    pub fn describe(self) -> String {
        match self {
            Self::Kernels(isa) => format!("kernels ({})", isa.name()),
            Self::Tensor => "tensor".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_an_unknown_one_is_refused() {
        assert_eq!(
            ComputePath::from_name("tensor").unwrap(),
            ComputePath::Tensor
        );
        assert_eq!(
            ComputePath::from_name(" Tensor ").unwrap(),
            ComputePath::Tensor
        );
        assert_eq!(
            ComputePath::from_name("kernels").unwrap(),
            ComputePath::Kernels(Isa::active())
        );
        let e = ComputePath::from_name("gpu").unwrap_err().to_string();
        assert!(e.contains("TTC_COMPUTE_PATH=gpu"), "{e}");
    }
}
