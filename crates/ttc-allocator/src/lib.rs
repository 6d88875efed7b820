//! ttc-allocator: answers each prompt with the right amount of compute (Huang et al., "Latency and
//! Token-Aware Test-Time Compute", arXiv 2509.09864; docs/design.md). It predicts, for every
//! configuration on the [`menu`], the probability of a correct answer from the model's own hidden
//! state ([`probe`]), the tokens it will generate ([`probe::TokenModel`]) and its latency on this
//! device ([`latency`], measured by `profile`), and the [`policy`] picks the one that maximizes
//! `P(correct) - lambda_T * tokens - lambda_L * seconds`. [`calibrate`] builds the probe's labels
//! from [`dataset`]s by repeated sampling.

pub mod calibrate;
pub mod corrections;
pub mod dataset;
pub mod error;
pub mod latency;
pub mod menu;
pub mod prompt;
pub mod prompt_kind;

pub use error::{AllocatorError, Result};
pub use menu::Config;
pub mod evaluate;
pub mod policy;
pub mod probe;
pub mod route;
