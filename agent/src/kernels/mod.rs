//! Fast CPU kernels for the paper's CNN, as candle custom operations.
//!
//! candle's stock CPU convolution backward (a direct transposed convolution) and its
//! max-pool backward (upsample, compare, mask) made training about ten times slower than
//! Keras on the same two cores. These operations keep candle as the tensor library and
//! its autograd, but do the heavy lifting themselves: a 3x3 "same" convolution as
//! im2col + GEMM (the `gemm` crate candle itself uses, which has AVX2/AVX-512 and NEON
//! kernels) with the bias and ReLU fused in, its two backward passes (GEMM + col2im, and
//! GEMM over im2col), a dense layer whose gradients come out contiguous, a 2x2 max-pool with Keras' "same" padding (7 -> 4), and a fused
//! Adam step that updates parameters in place.
//!
//! Threads: work is split over images (or fixed-size element chunks) with rayon; every
//! reduction across images (the weight and bias gradients) sums fixed-size groups of
//! images in a fixed order, so results depend on the seed only, not on the thread
//! count or scheduling.
//!
//! Layouts are candle's: activations NCHW, convolution weights OIHW, biases O, all f32.

mod adam;
mod conv;
mod dense;
mod linalg;
mod pool;

pub use adam::Adam;
pub use conv::{conv3x3_relu_pool, conv3x3_same};
pub use dense::linear;
pub use pool::max_pool2x2_same;

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
