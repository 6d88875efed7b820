//! Choosing the compute device: CPU by default; CUDA and Metal when built with their feature.

use candle_core::Device;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
    Metal,
}

impl std::str::FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "metal" => Ok(Self::Metal),
            other => Err(format!("unknown device '{other}' (cpu, cuda, metal)")),
        }
    }
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
        }
    }

    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda if !cfg!(feature = "cuda") => Err(EngineError::Device(
                "this build has no CUDA support; rebuild with `--features cuda`".into(),
            )),
            Self::Metal if !cfg!(feature = "metal") => Err(EngineError::Device(
                "this build has no Metal support; rebuild with `--features metal`".into(),
            )),
            Self::Cuda => Device::new_cuda(0).map_err(|e| {
                EngineError::Device(format!("cannot open CUDA device 0: {}", first_line(&e)))
            }),
            Self::Metal => Device::new_metal(0).map_err(|e| {
                EngineError::Device(format!("cannot open Metal device 0: {}", first_line(&e)))
            }),
        }
    }
}

/// The first line of a candle error: candle appends a backtrace when `RUST_BACKTRACE` is set,
/// and a user gets one line.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}
