//! Hostile updates for robustness experiments (`fl-aggregator simulate --hostile`) and the
//! attack tests: what a compromised, buggy or garbage-trained board could send. The learner
//! never uses this module.
//!
//! - `scale:S`: the trained weights multiplied by S (e.g. `scale:-4`, a model-replacement
//!   attack pushing the average the other way);
//! - `noise`: garbage of the right shape and scale: every tensor replaced by Gaussian
//!   noise with that tensor's own (population) mean and standard deviation, drawn from the
//!   seeded generator (adding such noise to a trained model instead barely hurts it: 5
//!   points on MNIST even at 94% of the FedAvg weight, so it is no attack);
//! - `flip:A:B`: trained on data whose labels A and B are swapped (data poisoning); the
//!   update itself is an honest training result.
//!
//! A hostile learner also claims the largest sample count its cap allows; that part is the
//! caller's (it knows the cap).

use std::str::FromStr;

use anyhow::{bail, Context, Result};

use crate::data::{Dataset, N_CLASSES};
use crate::rng::Rng;
use crate::weights::{ModelFile, NamedTensor};

/// One hostile behaviour; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    Scale(f32),
    Noise,
    FlipLabels(u8, u8),
}

impl FromStr for Attack {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Attack> {
        let parts: Vec<&str> = text.split(':').collect();
        let class = |s: &str| -> Result<u8> {
            let c: u8 = s.parse().with_context(|| format!("attack {text:?}: class {s:?} is not a number"))?;
            if usize::from(c) >= N_CLASSES {
                bail!("attack {text:?}: class {c} is not between 0 and {}", N_CLASSES - 1);
            }
            Ok(c)
        };
        match parts.as_slice() {
            ["scale", factor] => {
                let f: f32 = factor.parse().with_context(|| format!("attack {text:?}: factor {factor:?} is not a number"))?;
                if !f.is_finite() {
                    bail!("attack {text:?}: the factor must be finite");
                }
                Ok(Attack::Scale(f))
            }
            ["noise"] => Ok(Attack::Noise),
            ["flip", a, b] => {
                let (a, b) = (class(a)?, class(b)?);
                if a == b {
                    bail!("attack {text:?}: flipping a class with itself changes nothing");
                }
                Ok(Attack::FlipLabels(a, b))
            }
            _ => bail!("unknown attack {text:?}: expected scale:S, noise or flip:A:B"),
        }
    }
}

impl Attack {
    /// The training data a learner with this behaviour trains on.
    pub fn poison(&self, data: &Dataset) -> Result<Dataset> {
        match *self {
            Attack::FlipLabels(a, b) => {
                let labels = data
                    .labels()
                    .iter()
                    .map(|&l| {
                        if l == a {
                            b
                        } else if l == b {
                            a
                        } else {
                            l
                        }
                    })
                    .collect();
                data.with_labels(labels)
            }
            Attack::Scale(_) | Attack::Noise => Ok(data.clone()),
        }
    }

    /// The update a learner with this behaviour sends instead of `trained`.
    pub fn corrupt(&self, trained: &ModelFile, seed: u64) -> ModelFile {
        let mut rng = Rng::new(seed);
        let tensors = trained
            .tensors
            .iter()
            .map(|t| {
                let values = t.to_f32();
                let changed: Vec<f32> = match *self {
                    Attack::Scale(s) => values.iter().map(|v| v * s).collect(),
                    Attack::Noise => {
                        let n = values.len().max(1) as f64;
                        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
                        let std = (values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
                        values.iter().map(|_| (mean + std * rng.normal()) as f32).collect()
                    }
                    Attack::FlipLabels(..) => values,
                };
                NamedTensor::from_f32(&t.name, &t.dims(), &changed)
            })
            .collect();
        ModelFile { tensors, ..trained.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_parse_and_bad_ones_are_named() {
        assert_eq!("scale:-4".parse::<Attack>().unwrap(), Attack::Scale(-4.0));
        assert_eq!("noise".parse::<Attack>().unwrap(), Attack::Noise);
        assert_eq!("flip:7:1".parse::<Attack>().unwrap(), Attack::FlipLabels(7, 1));
        for (bad, says) in [
            ("scale:x", "factor \"x\" is not a number"),
            ("scale:inf", "must be finite"),
            ("flip:7:10", "class 10 is not between 0 and 9"),
            ("flip:3:3", "changes nothing"),
            ("bribe", "unknown attack \"bribe\""),
        ] {
            let err = format!("{:#}", bad.parse::<Attack>().unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn scale_and_noise_change_the_weights_as_documented() {
        let model = ModelFile::initial(1);
        let scaled = Attack::Scale(-4.0).corrupt(&model, 0);
        assert_eq!(scaled.tensors[0].to_f32()[5], -4.0 * model.tensors[0].to_f32()[5]);
        let noisy = Attack::Noise.corrupt(&model, 9);
        assert_eq!(noisy.to_bytes(), Attack::Noise.corrupt(&model, 9).to_bytes(), "seeded");
        // The noise has about the tensor's own spread, and nothing of its values.
        let (w, v) = (model.tensors[6].to_f32(), noisy.tensors[6].to_f32());
        let spread = |xs: &[f32]| {
            let m = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
            (xs.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
        };
        let ratio = spread(&v) / spread(&w);
        assert!((0.95..1.05).contains(&ratio), "noise spread / tensor spread = {ratio}");
        assert!(w.iter().zip(&v).filter(|(a, b)| a == b).count() < 3, "the noise replaces the values");
    }

    #[test]
    fn flipping_swaps_exactly_two_labels() {
        let images = vec![0u8; 4 * 784];
        let data = Dataset::from_raw(images, vec![7, 1, 3, 7]).unwrap();
        let flipped = Attack::FlipLabels(7, 1).poison(&data).unwrap();
        assert_eq!(flipped.labels(), &[1, 7, 3, 1]);
    }
}
