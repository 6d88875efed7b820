//! A probe file: one safetensors file holding the network's weights and the standardization
//! and projection of the hidden state, with the [`ProbeMeta`] as JSON in the file's metadata
//! (key `ttc_probe`). Reading checks every part, so a bad file is one clear error.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::features::Features;
use super::kind::KindHead;
use super::net::Net;
use super::{Probe, ProbeMeta};
use crate::error::{AllocatorError, Result};

impl Probe {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = HashMap::from([(
            "ttc_probe".to_string(),
            serde_json::to_string(&self.meta).expect("meta serializes"),
        )]);
        let mut named: Vec<(&String, &Tensor)> = self.tensors.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        safetensors::serialize(named, Some(meta))
            .map_err(|e| AllocatorError::Invalid(format!("cannot serialize the probe: {e}")))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, self.to_bytes()?).map_err(crate::error::io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(crate::error::io_err(path))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| AllocatorError::Probe {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&bytes).map_err(|reason| AllocatorError::Probe {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Reads a probe file's bytes; the error says what is wrong with them.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors file ({e})"))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("ttc_probe"))
            .ok_or("not a ttc probe (no ttc_probe metadata)")?;
        let meta: ProbeMeta =
            serde_json::from_str(json).map_err(|e| format!("bad probe metadata ({e})"))?;
        // The token cap becomes the answers' cap and sizes KV reservations: bounded here.
        const MAX_TOKEN_CAP: usize = 1 << 20;
        if !(1..=MAX_TOKEN_CAP).contains(&meta.tokens.max_tokens) {
            return Err(format!(
                "tokens.max_tokens is {}, outside 1..={MAX_TOKEN_CAP}",
                meta.tokens.max_tokens
            ));
        }
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| format!("bad probe weights ({})", first_line(&e.to_string())))?;
        let vec = |name: &str| -> std::result::Result<Vec<f32>, String> {
            let t = tensors
                .get(name)
                .ok_or_else(|| format!("missing tensor {name}"))?;
            let v = t
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| format!("tensor {name}: {}", first_line(&e.to_string())))?;
            if v.len() != meta.hidden_dim {
                return Err(format!(
                    "tensor {name} has {} values, expected {}",
                    v.len(),
                    meta.hidden_dim
                ));
            }
            Ok(v)
        };
        let (mean, std) = (vec("hidden_mean")?, vec("hidden_std")?);
        let projection = tensors
            .get("projection")
            .ok_or("missing tensor projection")?
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32)?.to_vec1::<f32>())
            .map_err(|e| format!("tensor projection: {}", first_line(&e.to_string())))?;
        if Some(projection.len()) != meta.components.checked_mul(meta.hidden_dim) {
            return Err(format!(
                "tensor projection has {} values, expected {} x {}",
                projection.len(),
                meta.components,
                meta.hidden_dim
            ));
        }
        let features = Features {
            mean,
            std,
            projection,
            components: meta.components,
        };
        let kind = match &meta.kind {
            None => None,
            Some(k) => {
                // Lengths are summed per request: bounded, like every value read from a file.
                const MAX_LENGTHS: usize = 1 << 16;
                if k.open_lengths.len() > MAX_LENGTHS
                    || !(1..=MAX_TOKEN_CAP).contains(&k.length_cap.max(1))
                    || !k.bias.is_finite()
                {
                    return Err("bad kind head metadata".into());
                }
                let head = KindHead {
                    mean: vec("kind.mean")?,
                    std: vec("kind.std")?,
                    weight: vec("kind.weight")?,
                    bias: k.bias,
                };
                let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
                if !finite(&head.mean)
                    || !finite(&head.weight)
                    || !head.std.iter().all(|&s| s.is_finite() && s > 0.0)
                {
                    return Err("the kind head has values that are not finite".into());
                }
                Some(head)
            }
        };
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
        let net = Net::new(&vb, meta.components, meta.mlp_width)
            .map_err(|e| format!("bad probe weights ({})", first_line(&e.to_string())))?;
        Ok(Self {
            meta,
            net,
            features,
            tensors,
            kind,
        })
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_probe_bytes_are_a_clear_error() {
        assert!(Probe::from_bytes(b"garbage")
            .err()
            .unwrap()
            .contains("not a safetensors file"));
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let plain = safetensors::serialize([("x", &t)], None).unwrap();
        assert!(Probe::from_bytes(&plain)
            .err()
            .unwrap()
            .contains("no ttc_probe"));
    }

    /// The probe shipped for SmolLM2-135M predicts what it predicted when it was trained (on
    /// 2026-12-02): loading reads the fitted projection back, it does not fit anything.
    #[test]
    fn the_shipped_probe_predicts_as_it_did() {
        let p = Probe::from_bytes(include_bytes!(
            "../../../../models/smollm2-135m.probe.safetensors"
        ))
        .unwrap();
        let h: Vec<f32> = (0..576).map(|i| ((i as f32) * 0.37).sin() * 2.0).collect();
        let expected = [
            0.1252668391732753,
            0.06454679412287913,
            0.07216764333718126,
            0.08130152407983937,
            0.09230869911262965,
            0.08009293864298883,
            0.0918629619423199,
            0.10627654862970819,
            0.12396054447491889,
            0.0836636152423444,
            0.09485648943733951,
            0.1083400780871931,
            0.12462664992848596,
            0.07216764333718126,
            0.08130152407983937,
            0.09230869911262965,
            0.08358282507951471,
            0.09374443333636566,
            0.12125225386504067,
        ];
        let got = p.accuracy(&h, 40, &p.meta.menu).unwrap();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-9, "{got:?}");
        }
        assert!((p.sample_tokens(&h, 40).unwrap() - 17.31734174052024).abs() < 1e-6);
        // Majority-adaptive shares majority's accuracy (menu indices 2..5 are majority@4, 8, 16,
        // 13..16 majority-adaptive@4, 8, 16).
        assert_eq!(&got[2..5], &got[13..16]);
        // Trained with its hyperparameters chosen by cross-validation.
        assert_eq!(p.meta.report.cv_folds, 4);
        assert_eq!(p.meta.report.hyperparameters.len(), 6);
        // Its length head is the ridge fit of `probe::length`, not the network's.
        assert!(p.meta.report.length_penalty > 0.0);
        assert!(p.meta.report.length_cv_log_error > 0.0);
    }
}
