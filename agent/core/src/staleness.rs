//! Asynchronous rounds (FedBuff, Nguyen et al., AISTATS 2022; staleness weighting as in
//! FedAsync, Xie et al., 2019): how an update trained on an older global model enters the
//! next one.
//!
//! An update of round `u` was trained on the global model of round `u - 1` (or its encoded
//! copy: its base `b`). Published into global round `R`, its staleness is `τ = R - u`
//! (0 when it was trained on the latest global model `G = G_(R-1)`). The aggregator does
//! not average the update's absolute weights `w`, which would pull the model back towards
//! an old one; it **rebases** the update onto `G` with its step scaled by the staleness
//! weight:
//!
//! ```text
//!     m = G + s(τ) · (w - b),        s(τ) = 1 / sqrt(1 + τ)
//! ```
//!
//! and hands the rebased models `m` to the round's rule. With FedAvg the global model is
//! then `G + Σ n_i s(τ_i) (w_i - b_i) / Σ n_i`: FedBuff's buffered step, each update
//! weighted by its samples and damped by its staleness (a fresh update counts fully, one
//! 3 rounds old half). Every other rule combines the same way: median, trimmed mean, Krum
//! and Multi-Krum see the rebased, damped updates, and clipping measures `s(τ)·|w - b|`,
//! the step each update would take from `G`.
//!
//! Everything is IEEE f32 arithmetic, element by element, without FMA (`s(τ)` is computed
//! in f64, correctly rounded, then rounded to f32), so any CPU recomputes the same bytes.

use anyhow::{ensure, Result};

use crate::weights::{check_layout, ModelFile, NamedTensor};

/// The staleness function, as the round record names it.
pub const WEIGHTING: &str = "1/sqrt(1+staleness)";

/// The staleness bound, one rule for the aggregator and `verify`: an update of round
/// `update_round` (trained on the global model of `update_round - 1`) may be an input of
/// global round `round` if it is not of a later round and at most `max_staleness` behind.
pub fn within(round: u64, update_round: u64, max_staleness: u64) -> bool {
    (1..=round).contains(&update_round) && round - update_round <= max_staleness
}

/// `s(τ) = 1 / sqrt(1 + τ)`, rounded to f32.
pub fn weight(staleness: u64) -> f32 {
    (1.0 / (1.0 + staleness as f64).sqrt()) as f32
}

/// `current + weight(staleness) · (update - base)`, element by element; the result keeps
/// `update`'s sample count and takes `current`'s round. Errors if the three layouts differ.
pub fn rebase(update: &ModelFile, base: &ModelFile, current: &ModelFile, staleness: u64) -> Result<ModelFile> {
    check_layout(update, Some(current), "rebasing", "the update", "the latest global model")?;
    check_layout(base, Some(current), "rebasing", "the update's base model", "the latest global model")?;
    ensure!(update.n_samples > 0, "rebasing: the update has n_samples 0");
    let s = weight(staleness);
    let tensors = current
        .tensors
        .iter()
        .zip(&update.tensors)
        .zip(&base.tensors)
        .map(|((g, w), b)| {
            let values: Vec<f32> = g.to_f32().iter().zip(w.to_f32()).zip(b.to_f32()).map(|((&g, w), b)| g + s * (w - b)).collect();
            NamedTensor::from_f32(&g.name, &g.dims(), &values)
        })
        .collect();
    Ok(ModelFile { tensors, n_samples: update.n_samples, ..current.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(values: &[f32], n_samples: u64, round: u64) -> ModelFile {
        let mut m = ModelFile::initial(1);
        m.tensors.truncate(1);
        m.tensors[0] = NamedTensor::from_f32("w", &[values.len()], values);
        m.n_samples = n_samples;
        m.round = round;
        m
    }

    #[test]
    fn the_bound_counts_rounds_behind_and_refuses_later_ones() {
        assert!(within(5, 5, 0) && within(5, 3, 2) && !within(5, 2, 2));
        assert!(!within(5, 6, 4) && !within(5, 0, 9));
    }

    #[test]
    fn weights_fall_with_staleness() {
        assert_eq!(weight(0), 1.0);
        assert_eq!(weight(3), 0.5);
        assert!((weight(1) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        assert!(weight(4) < weight(3) && weight(100) > 0.0);
    }

    #[test]
    fn a_stale_step_is_damped_and_moved_onto_the_latest_model() {
        let base = model(&[1.0, 2.0, 3.0], 1, 2);
        let update = model(&[3.0, 2.0, -1.0], 50, 3);
        let current = model(&[10.0, 10.0, 10.0], 1, 5);
        // Staleness 3: half the step (2, 0, -4) from the latest model.
        let m = rebase(&update, &base, &current, 3).unwrap();
        assert_eq!(m.tensors[0].to_f32(), [11.0, 10.0, 8.0]);
        assert_eq!((m.n_samples, m.round), (50, 5));
        // Fresh: the whole step.
        let m = rebase(&update, &base, &current, 0).unwrap();
        assert_eq!(m.tensors[0].to_f32(), [12.0, 10.0, 6.0]);
        // A layout that differs is refused, naming which model.
        let err = rebase(&model(&[1.0], 1, 3), &base, &current, 0).unwrap_err().to_string();
        assert!(err.contains("the update"), "{err}");
    }
}
