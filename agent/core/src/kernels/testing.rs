//! Helpers the kernels' tests share: comparing tensors, and the gradients of two ops
//! through a random linear functional of their outputs.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var, D};

/// Largest absolute difference between two tensors of the same shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap()
}

/// The gradients of `sum(ours * probe)` and `sum(theirs * probe)`: a random probe makes
/// every entry of every gradient count.
pub fn probe_grads(ours: Tensor, theirs: Tensor, probe: &Tensor) -> (GradStore, GradStore) {
    let grads = |out: Tensor| (out * probe).unwrap().sum_all().unwrap().backward().unwrap();
    (grads(ours), grads(theirs))
}

/// Asserts that both ops give each variable in `vars` the same gradient within `tol`.
pub fn assert_grads_close(ours: Tensor, theirs: Tensor, probe: &Tensor, vars: &[(&str, &Var)], tol: f32, case: &str) {
    let (g1, g2) = probe_grads(ours, theirs, probe);
    for (name, v) in vars {
        let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
        assert!(d < tol, "grad {name} differs by {d} for {case}");
    }
}
