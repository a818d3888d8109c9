//! Fast CPU kernels for the paper's CNN: slice functions that [`crate::network`] runs
//! directly, each also wrapped as a candle custom op (with its backward pass) so that
//! the tests can check it against candle's stock operations.
//!
//! candle's stock CPU convolution backward (a direct transposed convolution), its
//! max-pool backward (upsample, compare, mask) and its AdamW (a dozen allocating tensor
//! ops per parameter) made training about ten times slower than Keras on the same two
//! cores. Here:
//! - [`conv_relu_pool_forward`] / [`conv_relu_pool_backward`] ([`conv3x3_relu_pool`] as
//!   a candle op): 3x3 "same" convolution + bias + ReLU + 2x2 max-pool with Keras'
//!   "same" padding (7 -> 4), channels-last, one GEMM per group of images (the `gemm`
//!   crate candle itself uses: AVX2/AVX-512 on x86, NEON on ARM, picked at run time);
//!   the first layer (one input channel) runs direct;
//! - [`linear_forward`] and its backward ([`linear`] as a candle op): dense layers;
//! - [`AdamStep`] ([`Adam`] as a `candle_nn::Optimizer`): a fused, in-place Adam(W).
//!
//! Vector code: the loops outside the GEMMs (patch copies, pooling, gradient scatter)
//! are written as plain element loops that compilers vectorise, and compiled twice more
//! on x86-64 for AVX-512 and AVX2 + FMA, picked at run time (the x86-64 baseline is
//! SSE2); on aarch64 NEON is the baseline.
//!
//! Threads: work is split with rayon over images, groups of images or row blocks whose
//! sizes depend on the tensor shapes only; reductions across images (weight and bias
//! gradients) add fixed groups in a fixed order. Results therefore depend on the seed
//! and the batch, not on the thread count or scheduling.
//!
//! Layouts: the candle ops take candle's NCHW; the slice functions take channels-last
//! (NHWC) activations. Weights are always OIHW (the model file's), biases O, all f32.

mod adam;
mod conv;
mod dense;
mod linalg;
#[cfg(test)]
mod testing;

pub use adam::{Adam, AdamStep};
pub use conv::{conv3x3_relu_pool, conv_relu_pool_backward, conv_relu_pool_forward, nchw_to_nhwc, nhwc_to_nchw, Dims as ConvDims};
pub use dense::{linear, linear_backward_input, linear_backward_params, linear_forward};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};

/// The contiguous f32 data of a custom op's operand, or an error naming the op.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data.as_slice(),
        other => bail!("{op}: expected an f32 tensor, found {:?}", other.dtype()),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: expected a contiguous tensor, found strides {:?}", layout.stride()),
    }
}

/// Images per partial sum in reductions over the batch. Fixed (not derived from the thread
/// count) so that the summation order, and hence every bit of the result, is the same
/// whatever the number of threads.
const IMAGES_PER_PARTIAL: usize = 4;

/// Elements per task in element-wise kernels: large enough to amortise rayon's overhead.
const ELEMENTS_PER_TASK: usize = 16 * 1024;
