//! Fast CPU kernels for the paper's CNN, as candle custom operations.
//!
//! candle's stock CPU convolution backward (a direct transposed convolution), its
//! max-pool backward (upsample, compare, mask) and its AdamW (a dozen allocating tensor
//! ops per parameter) made training about ten times slower than Keras on the same two
//! cores. These operations keep candle as the tensor library and its autograd, but do
//! the heavy lifting themselves:
//! - [`conv3x3_relu_pool`]: 3x3 "same" convolution + bias + ReLU + 2x2 max-pool with
//!   Keras' "same" padding (7 -> 4) in one op: im2col + one GEMM per group of images
//!   (the `gemm` crate candle itself uses: AVX2/AVX-512 on x86, NEON on ARM, picked at
//!   run time); backward as GEMM + col2im (input) and GEMM over im2col (weights);
//! - [`conv3x3_same`] and [`max_pool2x2_same`]: the same pieces separately;
//! - [`linear`]: a dense layer whose gradients come out contiguous;
//! - [`Adam`]: a fused, in-place Adam(W) step (drop-in `candle_nn::Optimizer`).
//!
//! Threads: work is split with rayon over images, groups of images or row blocks whose
//! sizes depend on the tensor shapes only; reductions across images (weight and bias
//! gradients) add fixed groups in a fixed order. Results therefore depend on the seed
//! and the batch, not on the thread count or scheduling.
//!
//! Layouts are candle's: activations NCHW, convolution weights OIHW, biases O, all f32.

mod adam;
mod conv;
mod dense;
mod linalg;
#[cfg(test)]
mod testing;

pub use adam::{Adam, AdamStep};
pub use conv::{
    conv3x3_relu_pool, conv_relu_pool_backward, conv_relu_pool_forward, nchw_to_nhwc, nhwc_to_nchw,
    Dims as ConvDims,
};
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
        None => bail!(
            "{op}: expected a contiguous tensor, found strides {:?}",
            layout.stride()
        ),
    }
}

/// Images per partial sum in reductions over the batch. Fixed (not derived from the thread
/// count) so that the summation order, and hence every bit of the result, is the same
/// whatever the number of threads.
const IMAGES_PER_PARTIAL: usize = 4;

/// Elements per task in element-wise kernels: large enough to amortise rayon's overhead.
const ELEMENTS_PER_TASK: usize = 16 * 1024;
