//! Dense layer `relu?(xs * weight^T + bias)` as a custom op with its backward pass.
//!
//! candle's `Linear` computes the weight gradient as the gradient of a transposed view,
//! which its autograd then accumulates and the optimizer copies through strided
//! (element-by-element indexed) loops: for the 2048x256 layer that cost more than the
//! matrix products themselves. Here every gradient comes out contiguous in the
//! parameter's own layout, and the work is split into fixed row blocks (so results do
//! not depend on the thread count).

use super::f32_slice;
use super::linalg::{add_assign, sgemm};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows of the batch per task in the forward and input-gradient products: a quarter of
/// the batch (each task packs the whole weight matrix), at least 16. A function of the
/// batch size only, never of the thread count.
fn rows_per_task(n: usize) -> usize {
    (n / 4).clamp(16, 128)
}
/// Output units per task in the weight-gradient product.
const UNITS_PER_TASK: usize = 32;

/// `relu?(xs * weight^T + bias)`: `xs` (N, in), `weight` (out, in), `bias` (out) ->
/// (N, out); the same values as candle_nn's `Linear` (then `relu`), differentiable in all
/// three inputs.
// A candle op for the tests' comparison with candle's stock ops; training uses the slice
// functions below.
#[doc(hidden)]
pub fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor, relu: bool) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear { relu })
}

struct Linear {
    relu: bool,
}

/// `ys = relu?(xs * weight^T + bias)` on slices: `xs` (n x n_in), `weight` (n_out x n_in),
/// `bias` (n_out), `ys` (n x n_out), all row-major. Fixed row blocks in parallel.
///
/// # Panics
/// If a slice length does not match the dimensions (a caller's bug).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(n: usize, n_in: usize, n_out: usize, xs: &[f32], weight: &[f32], bias: &[f32], relu: bool, ys: &mut [f32]) {
    assert_eq!(xs.len(), n * n_in, "linear forward: input size");
    assert_eq!(weight.len(), n_out * n_in, "linear forward: weight size");
    assert_eq!(bias.len(), n_out, "linear forward: bias size");
    assert_eq!(ys.len(), n * n_out, "linear forward: output size");
    ys.par_chunks_mut(rows_per_task(n) * n_out).zip(xs.par_chunks(rows_per_task(n) * n_in)).for_each(|(y, x)| {
        let rows = x.len() / n_in;
        // y (rows x out) = x (rows x in) * W^T (in x out)
        sgemm(rows, n_out, n_in, y, false, x, n_in, 1, weight, 1, n_in);
        for row in y.chunks_exact_mut(n_out) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = if relu { (*v + b).max(0.0) } else { *v + b };
            }
        }
    });
}

/// `grad_xs = grad * weight` (n x n_in) for `grad` (n x n_out), `weight` (n_out x n_in).
pub fn linear_backward_input(n: usize, n_in: usize, n_out: usize, grad: &[f32], weight: &[f32], grad_xs: &mut [f32]) {
    assert_eq!(grad.len(), n * n_out, "linear backward: gradient size");
    assert_eq!(weight.len(), n_out * n_in, "linear backward: weight size");
    assert_eq!(grad_xs.len(), n * n_in, "linear backward: input gradient size");
    grad_xs.par_chunks_mut(rows_per_task(n) * n_in).zip(grad.par_chunks(rows_per_task(n) * n_out)).for_each(|(gx, g)| {
        let rows = g.len() / n_out;
        sgemm(rows, n_in, n_out, gx, false, g, n_out, 1, weight, n_in, 1);
    });
}

/// `grad_weight = grad^T * xs` (n_out x n_in) in fixed blocks of output units, and
/// `grad_bias` = the column sums of `grad` (rows added in order); both overwritten.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_params(
    n: usize,
    n_in: usize,
    n_out: usize,
    grad: &[f32],
    xs: &[f32],
    grad_weight: &mut [f32],
    grad_bias: &mut [f32],
) {
    assert_eq!(grad.len(), n * n_out, "linear backward: gradient size");
    assert_eq!(xs.len(), n * n_in, "linear backward: input size");
    assert_eq!(grad_weight.len(), n_out * n_in, "linear backward: weight gradient size");
    assert_eq!(grad_bias.len(), n_out, "linear backward: bias gradient size");
    grad_weight.par_chunks_mut(UNITS_PER_TASK * n_in).enumerate().for_each(|(block, gw)| {
        let units = gw.len() / n_in;
        // gw (units x in) = g[:, block]^T (units x N) * xs (N x in)
        sgemm(units, n_in, n, gw, false, &grad[block * UNITS_PER_TASK..], 1, n_out, xs, n_in, 1);
    });
    grad_bias.fill(0.0);
    for row in grad.chunks_exact(n_out) {
        add_assign(grad_bias, row);
    }
}

fn dims(op: &str, xs: &Layout, weight: &Layout) -> Result<(usize, usize, usize)> {
    let (n, n_in) = xs.shape().dims2()?;
    let (n_out, w_in) = weight.shape().dims2()?;
    if w_in != n_in || n == 0 || n_in == 0 || n_out == 0 {
        bail!("{op}: weight {:?} does not fit input {:?}", weight.shape(), xs.shape())
    }
    Ok((n, n_in, n_out))
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, n_in, n_out) = dims(self.name(), l1, l2)?;
        if l3.shape().dims() != [n_out] {
            bail!("{}: bias shape {:?}, expected ({n_out},)", self.name(), l3.shape())
        }
        let xs = f32_slice(s1, l1, self.name())?;
        let weight = f32_slice(s2, l2, self.name())?;
        let bias = f32_slice(s3, l3, self.name())?;
        let mut ys = vec![0f32; n * n_out];
        linear_forward(n, n_in, n_out, xs, weight, bias, self.relu, &mut ys);
        Ok((CpuStorage::F32(ys), Shape::from((n, n_out))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (n, n_in) = xs.dims2()?;
        let n_out = weight.dim(0)?;
        let mut grad = values(grad_res)?;
        if self.relu {
            // The ReLU passes the gradient where its output was positive.
            for (g, r) in grad.iter_mut().zip(values(res)?) {
                if r <= 0.0 {
                    *g = 0.0;
                }
            }
        }
        let (mut grad_w, mut grad_b) = (vec![0f32; n_out * n_in], vec![0f32; n_out]);
        linear_backward_params(n, n_in, n_out, &grad, &values(xs)?, &mut grad_w, &mut grad_b);
        let grad_xs = if xs.track_op() {
            let mut grad_xs = vec![0f32; n * n_in];
            linear_backward_input(n, n_in, n_out, &grad, &values(weight)?, &mut grad_xs);
            Some(Tensor::from_vec(grad_xs, (n, n_in), xs.device())?)
        } else {
            None
        };
        Ok((grad_xs, Some(Tensor::from_vec(grad_w, (n_out, n_in), xs.device())?), Some(Tensor::from_vec(grad_b, n_out, xs.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_grads_close, max_diff};
    use candle_core::{Device, Module, Var};

    /// Values and gradients against candle_nn's `Linear` (+ `relu`), on shapes that
    /// exercise partial row and unit blocks. Tolerance 1e-4: f32 sums of up to 300 terms.
    #[test]
    fn matches_candle_linear() {
        let dev = Device::Cpu;
        for &(n, n_in, n_out, relu) in &[(3, 5, 4, true), (33, 70, 40, true), (17, 300, 10, false), (1, 1, 1, true)] {
            let xs = Var::randn(0f32, 1.0, (n, n_in), &dev).unwrap();
            let w = Var::randn(0f32, 0.3, (n_out, n_in), &dev).unwrap();
            let b = Var::randn(0f32, 0.3, n_out, &dev).unwrap();
            let probe = Tensor::randn(0f32, 1.0, (n, n_out), &dev).unwrap();
            let ours = linear(&xs, &w, &b, relu).unwrap();
            let reference = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
            let mut theirs = reference.forward(&xs).unwrap();
            if relu {
                theirs = theirs.relu().unwrap();
            }
            assert!(max_diff(&ours, &theirs) < 1e-4, "forward {n} {n_in} {n_out}");
            let vars = [("xs", &xs), ("weight", &w), ("bias", &b)];
            assert_grads_close(ours, theirs, &probe, &vars, 1e-4, &format!("{n} {n_in} {n_out}"));
        }
    }
}
