//! 3x3 convolution with "same" padding (zero padding 1, stride 1), bias and optional ReLU
//! fused, as a candle custom op with a custom backward pass.
//!
//! Forward, per image: im2col (Cin*9 x H*W) then one GEMM with the weights viewed as a
//! Cout x Cin*9 matrix, which writes the NCHW output directly. Backward: the input
//! gradient is W^T x dY followed by col2im; the weight gradient is dY x col^T summed over
//! images in fixed groups; the bias gradient is a per-channel sum.

use super::linalg::{add_assign, sgemm, sum, with_scratch};
use super::{f32_slice, ELEMENTS_PER_TASK, IMAGES_PER_PARTIAL};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// `relu?(conv2d(xs, weight, padding 1) + bias)` for a 3x3 kernel: `xs` is (N, Cin, H, W),
/// `weight` (Cout, Cin, 3, 3), `bias` (Cout); the result is (N, Cout, H, W). Same
/// values as candle's `conv2d(.., padding 1, stride 1, dilation 1, groups 1)` followed by
/// a broadcast bias add (and `relu`), with gradients for all three inputs.
pub fn conv3x3_same(xs: &Tensor, weight: &Tensor, bias: &Tensor, relu: bool) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Conv3x3 { relu })
}

/// Shapes of a 3x3 convolution: `n` images of `c_in x h x w` in, `c_out` channels out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Height of the input (and of the convolution's output).
    pub h: usize,
    /// Width of the input (and of the convolution's output).
    pub w: usize,
}

impl Dims {
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Rows of the im2col matrix (the GEMM's inner dimension).
    fn k(&self) -> usize {
        self.c_in * 9
    }
    /// Height and width after the 2x2 "same" max-pool.
    pub fn pooled(&self) -> (usize, usize) {
        (self.h.div_ceil(2), self.w.div_ceil(2))
    }
    /// Values per image after the pool.
    pub fn pooled_per_image(&self) -> usize {
        let (oh, ow) = self.pooled();
        self.c_out * oh * ow
    }
}

fn dims(op: &str, xs: &Layout, weight: &Layout) -> Result<Dims> {
    let (n, c_in, h, w) = xs.shape().dims4()?;
    let (c_out, w_in, kh, kw) = weight.shape().dims4()?;
    if w_in != c_in || kh != 3 || kw != 3 {
        bail!(
            "{op}: weight shape {:?} does not fit input shape {:?}",
            weight.shape(),
            xs.shape()
        )
    }
    if n == 0 || c_in == 0 || c_out == 0 || h == 0 || w == 0 {
        bail!(
            "{op}: empty tensor (input {:?}, weight {:?})",
            xs.shape(),
            weight.shape()
        )
    }
    Ok(Dims {
        n,
        c_in,
        c_out,
        h,
        w,
    })
}

/// Images per GEMM in the convolution passes for a batch of `n`: enough columns
/// (images x H*W, about 512) to amortise the packing of the weights in the small late
/// layers, spread evenly over the batch (32 images of 7x7 make 4 groups of 8, not
/// 10+10+10+2, which would leave a core idle). Depends on the shapes only, never on
/// the thread count.
fn images_per_gemm(hw: usize, n: usize) -> usize {
    let target = (512 / hw).clamp(1, 16);
    n.div_ceil(n.div_ceil(target)).max(1)
}

/// Copies one image's `rows x hw` matrix into columns `[offset, offset + hw)` of a
/// `rows x row_stride` matrix (to put several images side by side for one GEMM).
fn place_columns(src: &[f32], hw: usize, dst: &mut [f32], offset: usize, row_stride: usize) {
    for (r, src_row) in src.chunks_exact(hw).enumerate() {
        dst[r * row_stride + offset..][..hw].copy_from_slice(src_row);
    }
}

/// Fills `col` (Cin*9 rows, `row_stride` apart, of H*W values) with the zero-padded 3x3 neighbourhoods of one image:
/// `col[(c*9 + ky*3 + kx), y*W + x] = image[c, y+ky-1, x+kx-1]` (0 outside).
fn im2col(image: &[f32], c_in: usize, h: usize, w: usize, col: &mut [f32], row_stride: usize) {
    let hw = h * w;
    for c in 0..c_in {
        let plane = &image[c * hw..(c + 1) * hw];
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &mut col[(c * 9 + ky * 3 + kx) * row_stride..][..hw];
                for (oy, dst) in row.chunks_exact_mut(w).enumerate() {
                    let iy = oy + ky;
                    if iy == 0 || iy > h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[(iy - 1) * w..][..w];
                    match kx {
                        0 => {
                            dst[0] = 0.0;
                            dst[1..].copy_from_slice(&src[..w - 1]);
                        }
                        1 => dst.copy_from_slice(src),
                        _ => {
                            dst[..w - 1].copy_from_slice(&src[1..]);
                            dst[w - 1] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: scatters-and-adds the column gradients into one image's
/// input gradient (overwritten).
fn col2im(col: &[f32], c_in: usize, h: usize, w: usize, row_stride: usize, image: &mut [f32]) {
    let hw = h * w;
    image.fill(0.0);
    for c in 0..c_in {
        let plane = &mut image[c * hw..(c + 1) * hw];
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &col[(c * 9 + ky * 3 + kx) * row_stride..][..hw];
                for (oy, src) in row.chunks_exact(w).enumerate() {
                    let iy = oy + ky;
                    if iy == 0 || iy > h {
                        continue;
                    }
                    let dst = &mut plane[(iy - 1) * w..][..w];
                    match kx {
                        0 => add_assign(&mut dst[..w - 1], &src[1..]),
                        1 => add_assign(dst, src),
                        _ => add_assign(&mut dst[1..], &src[..w - 1]),
                    }
                }
            }
        }
    }
}

/// The forward op; `relu` says whether the ReLU is fused in.
struct Conv3x3 {
    relu: bool,
}

impl CustomOp3 for Conv3x3 {
    fn name(&self) -> &'static str {
        "conv3x3-same"
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
        let d = dims(self.name(), l1, l2)?;
        if l3.shape().dims() != [d.c_out] {
            bail!(
                "{}: bias shape {:?}, expected ({},)",
                self.name(),
                l3.shape(),
                d.c_out
            )
        }
        let xs = f32_slice(s1, l1, self.name())?;
        let weight = f32_slice(s2, l2, self.name())?;
        let bias = f32_slice(s3, l3, self.name())?;
        let (hw, k, relu) = (d.hw(), d.k(), self.relu);
        let mut ys = vec![0f32; d.n * d.c_out * hw];
        ys.par_chunks_mut(d.c_out * hw)
            .zip(xs.par_chunks(d.c_in * hw))
            .for_each_init(
                || vec![0f32; k * hw],
                |col, (y, x)| {
                    im2col(x, d.c_in, d.h, d.w, col, hw);
                    sgemm(d.c_out, hw, k, y, false, weight, k, 1, col, hw, 1);
                    for (plane, b) in y.chunks_exact_mut(hw).zip(bias) {
                        if relu {
                            plane.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
                        } else {
                            plane.iter_mut().for_each(|v| *v += b);
                        }
                    }
                },
            );
        Ok((CpuStorage::F32(ys), Shape::from((d.n, d.c_out, d.h, d.w))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_res = grad_res.contiguous()?;
        // Gradient at the pre-activation: ReLU passes it where its output was positive.
        let grad = if self.relu {
            grad_res.apply_op2_no_bwd(res, &ReluMask)?
        } else {
            grad_res
        };
        // The network's input (the images) needs no gradient: skip the costliest pass.
        let grad_xs = if xs.track_op() {
            Some(grad.apply_op2_no_bwd(weight, &Conv3x3BwdInput)?)
        } else {
            None
        };
        let grad_weight = xs.apply_op2_no_bwd(&grad, &Conv3x3BwdWeight)?;
        let grad_bias = grad.apply_op1_no_bwd(&ChannelSum)?;
        Ok((grad_xs, Some(grad_weight), Some(grad_bias)))
    }
}

/// `max_pool2x2_same(relu(conv3x3_same(xs, weight) + bias))` in one op: the full-size
/// convolution output never becomes a tensor (it lives in a per-image scratch buffer
/// that stays in cache), and the backward pass needs no separate ReLU and pool passes
/// nor candle's zero-initialised gradient accumulators for it. Same values and
/// gradients as [`conv3x3_same`] followed by [`super::max_pool2x2_same`].
pub fn conv3x3_relu_pool(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        ConvReluPool {
            argmax: std::sync::Mutex::new(Vec::new()),
        },
    )
}

/// The fused op; `argmax` records, for each pooled output, which element of its 2x2
/// window (`dy * 2 + dx`) held the first maximum, or [`NO_GRADIENT`] where the ReLU
/// cut the output to zero, for the backward pass.
struct ConvReluPool {
    argmax: std::sync::Mutex<Vec<u8>>,
}

impl CustomOp3 for ConvReluPool {
    fn name(&self) -> &'static str {
        "conv3x3-relu-pool"
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
        let d = dims(self.name(), l1, l2)?;
        if l3.shape().dims() != [d.c_out] {
            bail!(
                "{}: bias shape {:?}, expected ({},)",
                self.name(),
                l3.shape(),
                d.c_out
            )
        }
        let xs = f32_slice(s1, l1, self.name())?;
        let weight = f32_slice(s2, l2, self.name())?;
        let bias = f32_slice(s3, l3, self.name())?;
        let mut ys = vec![0f32; d.n * d.pooled_per_image()];
        let mut argmax = vec![0u8; ys.len()];
        conv_relu_pool_forward(d, xs, weight, bias, &mut ys, &mut argmax);
        *self
            .argmax
            .lock()
            .map_err(|_| candle_core::Error::Msg("argmax lock poisoned".into()))? = argmax;
        let (oh, ow) = d.pooled();
        Ok((CpuStorage::F32(ys), Shape::from((d.n, d.c_out, oh, ow))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let argmax = self
            .argmax
            .lock()
            .map_err(|_| candle_core::Error::Msg("argmax lock poisoned".into()))?;
        let c_out = weight.dim(0)?;
        let op = ConvReluPoolBwd {
            argmax: &argmax,
            need_input: xs.track_op(),
            param_grads: std::sync::Mutex::new(None),
        };
        let grad_xs = xs.apply_op3_no_bwd(weight, &grad_res.contiguous()?, &op)?;
        let (grad_weight, grad_bias) = op
            .param_grads
            .into_inner()
            .map_err(|_| candle_core::Error::Msg("gradient lock poisoned".into()))?
            .ok_or_else(|| candle_core::Error::Msg("conv3x3-relu-pool-bwd: no gradients".into()))?;
        let grad_weight = Tensor::from_vec(grad_weight, weight.shape(), xs.device())?;
        let grad_bias = Tensor::from_vec(grad_bias, c_out, xs.device())?;
        Ok((
            op.need_input.then_some(grad_xs),
            Some(grad_weight),
            Some(grad_bias),
        ))
    }
}

/// Marks a pooled output whose ReLU was closed (output 0): no gradient flows back.
const NO_GRADIENT: u8 = 4;

/// `max_pool2x2_same(relu(conv3x3_same(xs, weight) + bias))` on slices: `xs` holds
/// `d.n` images of `d.c_in x d.h x d.w`; `ys` and `argmax` take `d.n *
/// d.pooled_per_image()` values each. `argmax` records, per pooled output, the first
/// maximal element of its window (`dy * 2 + dx`), or [`NO_GRADIENT`] where the ReLU cut
/// the output to zero: it is what [`conv_relu_pool_backward`] needs of this pass.
///
/// Per fixed group of images: im2col side by side, one GEMM, then bias, ReLU and pool
/// straight out of the GEMM's output, which stays in a per-thread scratch buffer.
///
/// # Panics
/// If a slice length does not match `d` (a caller's bug: shapes are checked by the
/// tensor-level ops and by `crate::network`).
pub fn conv_relu_pool_forward(
    d: Dims,
    xs: &[f32],
    weight: &[f32],
    bias: &[f32],
    ys: &mut [f32],
    argmax: &mut [u8],
) {
    let (hw, k, h, w) = (d.hw(), d.k(), d.h, d.w);
    let (oh, ow) = d.pooled();
    let out_per_image = d.pooled_per_image();
    assert_eq!(xs.len(), d.n * d.c_in * hw, "conv forward: input size");
    assert_eq!(weight.len(), d.c_out * k, "conv forward: weight size");
    assert_eq!(bias.len(), d.c_out, "conv forward: bias size");
    assert_eq!(ys.len(), d.n * out_per_image, "conv forward: output size");
    assert_eq!(argmax.len(), ys.len(), "conv forward: argmax size");
    let group = images_per_gemm(hw, d.n);
    ys.par_chunks_mut(group * out_per_image)
        .zip(argmax.par_chunks_mut(group * out_per_image))
        .zip(xs.par_chunks(group * d.c_in * hw))
        .for_each(|((y, am), x)| {
            // The group's images side by side: col is K x (images * HW).
            let cols = x.len() / d.c_in;
            with_scratch(k * cols, d.c_out * cols, |col, conv| {
                for (i, image) in x.chunks_exact(d.c_in * hw).enumerate() {
                    im2col(image, d.c_in, h, w, &mut col[i * hw..], cols);
                }
                sgemm(d.c_out, cols, k, conv, false, weight, k, 1, col, cols, 1);
                for (i, (y, am)) in y
                    .chunks_exact_mut(out_per_image)
                    .zip(am.chunks_exact_mut(out_per_image))
                    .enumerate()
                {
                    for (c, ((b, y), am)) in bias
                        .iter()
                        .zip(y.chunks_exact_mut(oh * ow))
                        .zip(am.chunks_exact_mut(oh * ow))
                        .enumerate()
                    {
                        let plane = &conv[c * cols + i * hw..][..hw];
                        pool_plane(plane, h, w, *b, y, am);
                    }
                }
            });
        });
}

/// Bias, ReLU and 2x2 "same" max-pool of one `h x w` convolution output plane into
/// `y` (ceil(h/2) x ceil(w/2)), with the window argmax (see [`conv_relu_pool_forward`]).
fn pool_plane(plane: &[f32], h: usize, w: usize, b: f32, y: &mut [f32], am: &mut [u8]) {
    let ow = w.div_ceil(2);
    if h % 2 == 0 && w % 2 == 0 {
        // Full windows (28x28, 14x14): no bounds checks.
        for (oy, (y_row, am_row)) in y.chunks_exact_mut(ow).zip(am.chunks_exact_mut(ow)).enumerate() {
            let r0 = &plane[2 * oy * w..][..w];
            let r1 = &plane[(2 * oy + 1) * w..][..w];
            for (((o, a), p0), p1) in y_row
                .iter_mut()
                .zip(am_row.iter_mut())
                .zip(r0.chunks_exact(2))
                .zip(r1.chunks_exact(2))
            {
                let (mut best, mut at) = (p0[0], 0u8);
                if p0[1] > best {
                    (best, at) = (p0[1], 1);
                }
                if p1[0] > best {
                    (best, at) = (p1[0], 2);
                }
                if p1[1] > best {
                    (best, at) = (p1[1], 3);
                }
                *o = (best + b).max(0.0);
                *a = if best + b > 0.0 { at } else { NO_GRADIENT };
            }
        }
        return;
    }
    for (oy, (y_row, am_row)) in y.chunks_exact_mut(ow).zip(am.chunks_exact_mut(ow)).enumerate() {
        for (ox, (o, a)) in y_row.iter_mut().zip(am_row.iter_mut()).enumerate() {
            let (y0, x0) = (2 * oy, 2 * ox);
            let mut best = plane[y0 * w + x0];
            let mut best_at = 0u8;
            for (at, (yy, xx)) in [(1u8, (y0, x0 + 1)), (2, (y0 + 1, x0)), (3, (y0 + 1, x0 + 1))] {
                if yy < h && xx < w && plane[yy * w + xx] > best {
                    best = plane[yy * w + xx];
                    best_at = at;
                }
            }
            // relu(max(a) + b) == max(relu(a + b)): the bias is the same over the window.
            *o = (best + b).max(0.0);
            *a = if best + b > 0.0 { best_at } else { NO_GRADIENT };
        }
    }
}

/// The backward pass of [`conv_relu_pool_forward`] in one parallel sweep over fixed
/// groups of images: from the input `xs`, the `weight`, the forward's `argmax` and the
/// gradient of the pooled output `grad`, writes the weight and bias gradients
/// (overwritten) and, if `grad_xs` is given, the input gradient.
///
/// Per group, the pooled gradient is scattered through the recorded window maxima
/// straight into a side-by-side scratch matrix (the full-size unpooled gradient never
/// exists, nor its zeroing and re-reads by separate ops); the group's im2col serves the
/// weight-gradient GEMM and its buffer then takes the input-gradient GEMM before col2im.
/// Partial weight and bias sums per group are added in group order: deterministic
/// whatever the thread count.
///
/// # Panics
/// If a slice length does not match `d` (a caller's bug).
#[allow(clippy::too_many_arguments)]
pub fn conv_relu_pool_backward(
    d: Dims,
    xs: &[f32],
    weight: &[f32],
    argmax: &[u8],
    grad: &[f32],
    grad_xs: Option<&mut [f32]>,
    grad_weight: &mut [f32],
    grad_bias: &mut [f32],
) {
    let (hw, k, h, w) = (d.hw(), d.k(), d.h, d.w);
    let (oh, ow) = d.pooled();
    let pooled_per_image = d.pooled_per_image();
    assert_eq!(xs.len(), d.n * d.c_in * hw, "conv backward: input size");
    assert_eq!(weight.len(), d.c_out * k, "conv backward: weight size");
    assert_eq!(grad.len(), d.n * pooled_per_image, "conv backward: gradient size");
    assert_eq!(argmax.len(), grad.len(), "conv backward: argmax size");
    assert_eq!(grad_weight.len(), d.c_out * k, "conv backward: weight gradient size");
    assert_eq!(grad_bias.len(), d.c_out, "conv backward: bias gradient size");
    let group = images_per_gemm(hw, d.n).max(IMAGES_PER_PARTIAL);
    let n_groups = d.n.div_ceil(group);
    let need_input = grad_xs.is_some();
    let gx_chunks: Vec<&mut [f32]> = match grad_xs {
        Some(gx) => {
            assert_eq!(gx.len(), xs.len(), "conv backward: input gradient size");
            gx.chunks_mut(group * d.c_in * hw).collect()
        }
        None => (0..n_groups).map(|_| &mut [][..]).collect(),
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = gx_chunks
        .into_par_iter()
        .enumerate()
        .map(|(g_index, gx)| {
            let first = g_index * group;
            let m = group.min(d.n - first);
            let cols = m * hw;
            with_scratch(k * cols, d.c_out * cols, |col, g_side| {
                g_side.fill(0.0);
                let mut partial_b = vec![0f32; d.c_out];
                for i in 0..m {
                    let image = first + i;
                    let gp = &grad[image * pooled_per_image..][..pooled_per_image];
                    let am = &argmax[image * pooled_per_image..][..pooled_per_image];
                    for (c, (gp, am)) in gp.chunks_exact(oh * ow).zip(am.chunks_exact(oh * ow)).enumerate() {
                        let row = &mut g_side[c * cols + i * hw..][..hw];
                        let mut b = 0f32;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let at = am[oy * ow + ox];
                                if at != NO_GRADIENT {
                                    let g = gp[oy * ow + ox];
                                    let at = at as usize;
                                    row[(2 * oy + at / 2) * w + 2 * ox + at % 2] = g;
                                    b += g;
                                }
                            }
                        }
                        partial_b[c] += b;
                    }
                    let x = &xs[image * d.c_in * hw..][..d.c_in * hw];
                    im2col(x, d.c_in, h, w, &mut col[i * hw..], cols);
                }
                // partial (Cout x K) = g (Cout x cols) * col^T (cols x K)
                let mut partial_w = vec![0f32; d.c_out * k];
                sgemm(d.c_out, k, cols, &mut partial_w, false, g_side, cols, 1, col, 1, cols);
                if need_input {
                    // col (K x cols) = W^T (K x Cout) * g (Cout x cols)
                    sgemm(k, cols, d.c_out, col, false, weight, 1, k, g_side, cols, 1);
                    for (i, gxi) in gx.chunks_exact_mut(d.c_in * hw).enumerate() {
                        col2im(&col[i * hw..], d.c_in, h, w, cols, gxi);
                    }
                }
                (partial_w, partial_b)
            })
        })
        .collect();
    grad_weight.fill(0.0);
    grad_bias.fill(0.0);
    for (pw, pb) in &partials {
        add_assign(grad_weight, pw);
        add_assign(grad_bias, pb);
    }
}

/// The backward pass of [`ConvReluPool`] as a candle op over [`conv_relu_pool_backward`]:
/// `(xs, weight, pooled gradient) -> input gradient` (a 1-element dummy if `need_input`
/// is false), with the weight and bias gradients left in `param_grads`.
struct ConvReluPoolBwd<'a> {
    argmax: &'a [u8],
    need_input: bool,
    param_grads: std::sync::Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp3 for ConvReluPoolBwd<'_> {
    fn name(&self) -> &'static str {
        "conv3x3-relu-pool-bwd"
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
        let d = dims(self.name(), l1, l2)?;
        let (oh, ow) = d.pooled();
        if l3.shape().dims() != [d.n, d.c_out, oh, ow] || self.argmax.len() != d.n * d.pooled_per_image() {
            bail!("{}: gradient {:?} does not fit the forward pass", self.name(), l3.shape())
        }
        let xs = f32_slice(s1, l1, self.name())?;
        let weight = f32_slice(s2, l2, self.name())?;
        let grad = f32_slice(s3, l3, self.name())?;
        let mut grad_xs = vec![0f32; if self.need_input { xs.len() } else { 1 }];
        let mut grad_w = vec![0f32; weight.len()];
        let mut grad_b = vec![0f32; d.c_out];
        let gx = self.need_input.then_some(&mut grad_xs[..]);
        conv_relu_pool_backward(d, xs, weight, self.argmax, grad, gx, &mut grad_w, &mut grad_b);
        *self
            .param_grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient lock poisoned".into()))? = Some((grad_w, grad_b));
        let shape = if self.need_input { Shape::from((d.n, d.c_in, d.h, d.w)) } else { Shape::from(1) };
        Ok((CpuStorage::F32(grad_xs), shape))
    }
}

/// `grad * (res > 0)`: the ReLU backward, given the ReLU's output.
pub(super) struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "{}: shapes {:?} and {:?} differ",
                self.name(),
                l1.shape(),
                l2.shape()
            )
        }
        let grad = f32_slice(s1, l1, self.name())?;
        let res = f32_slice(s2, l2, self.name())?;
        let mut out = vec![0f32; grad.len()];
        out.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(
                grad.par_chunks(ELEMENTS_PER_TASK)
                    .zip(res.par_chunks(ELEMENTS_PER_TASK)),
            )
            .for_each(|(o, (g, r))| {
                for ((o, g), r) in o.iter_mut().zip(g).zip(r) {
                    *o = if *r > 0.0 { *g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Input gradient: `(grad (N, Cout, H, W), weight) -> (N, Cin, H, W)`.
struct Conv3x3BwdInput;

impl CustomOp2 for Conv3x3BwdInput {
    fn name(&self) -> &'static str {
        "conv3x3-same-bwd-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c_out, h, w) = l1.shape().dims4()?;
        let (w_out, c_in, _, _) = l2.shape().dims4()?;
        if w_out != c_out {
            bail!(
                "{}: weight {:?} does not fit gradient {:?}",
                self.name(),
                l2.shape(),
                l1.shape()
            )
        }
        let d = Dims {
            n,
            c_in,
            c_out,
            h,
            w,
        };
        let grad = f32_slice(s1, l1, self.name())?;
        let weight = f32_slice(s2, l2, self.name())?;
        let (hw, k) = (d.hw(), d.k());
        let group = images_per_gemm(hw, n);
        let mut grad_xs = vec![0f32; n * c_in * hw];
        grad_xs
            .par_chunks_mut(group * c_in * hw)
            .zip(grad.par_chunks(group * c_out * hw))
            .for_each_init(
                || (vec![0f32; k * group * hw], vec![0f32; c_out * group * hw]),
                |(col, g_side), (gx, g)| {
                    let cols = g.len() / c_out;
                    let g_side: &[f32] = if cols == hw {
                        g
                    } else {
                        for (i, gi) in g.chunks_exact(c_out * hw).enumerate() {
                            place_columns(gi, hw, g_side, i * hw, cols);
                        }
                        &g_side[..c_out * cols]
                    };
                    // col (K x cols) = W^T (K x Cout) * g (Cout x cols)
                    sgemm(k, cols, c_out, col, false, weight, 1, k, g_side, cols, 1);
                    for (i, gxi) in gx.chunks_exact_mut(c_in * hw).enumerate() {
                        col2im(&col[i * hw..], c_in, h, w, cols, gxi);
                    }
                },
            );
        Ok((CpuStorage::F32(grad_xs), Shape::from((n, c_in, h, w))))
    }
}

/// Weight gradient: `(xs (N, Cin, H, W), grad (N, Cout, H, W)) -> (Cout, Cin, 3, 3)`.
struct Conv3x3BwdWeight;

impl CustomOp2 for Conv3x3BwdWeight {
    fn name(&self) -> &'static str {
        "conv3x3-same-bwd-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c_in, h, w) = l1.shape().dims4()?;
        let (g_n, c_out, g_h, g_w) = l2.shape().dims4()?;
        if (g_n, g_h, g_w) != (n, h, w) {
            bail!(
                "{}: gradient {:?} does not fit input {:?}",
                self.name(),
                l2.shape(),
                l1.shape()
            )
        }
        let xs = f32_slice(s1, l1, self.name())?;
        let grad = f32_slice(s2, l2, self.name())?;
        let (hw, k) = (h * w, c_in * 9);
        // One partial sum per fixed group of images (one GEMM over the group's images
        // side by side), computed in parallel, then added in group order: deterministic
        // whatever the thread count.
        let group = images_per_gemm(hw, n).max(IMAGES_PER_PARTIAL);
        let partials: Vec<Vec<f32>> = xs
            .par_chunks(group * c_in * hw)
            .zip(grad.par_chunks(group * c_out * hw))
            .map_init(
                || (vec![0f32; k * group * hw], vec![0f32; c_out * group * hw]),
                |(col, g_side), (x_group, g_group)| {
                    let cols = x_group.len() / c_in;
                    for (i, (x, g)) in x_group
                        .chunks_exact(c_in * hw)
                        .zip(g_group.chunks_exact(c_out * hw))
                        .enumerate()
                    {
                        im2col(x, c_in, h, w, &mut col[i * hw..], cols);
                        place_columns(g, hw, g_side, i * hw, cols);
                    }
                    let mut partial = vec![0f32; c_out * k];
                    // partial (Cout x K) = g (Cout x cols) * col^T (cols x K)
                    sgemm(
                        c_out,
                        k,
                        cols,
                        &mut partial,
                        false,
                        &g_side[..c_out * cols],
                        cols,
                        1,
                        col,
                        1,
                        cols,
                    );
                    partial
                },
            )
            .collect();
        let mut total = partials
            .first()
            .cloned()
            .unwrap_or_else(|| vec![0f32; c_out * k]);
        for partial in partials.iter().skip(1) {
            add_assign(&mut total, partial);
        }
        Ok((CpuStorage::F32(total), Shape::from((c_out, c_in, 3, 3))))
    }
}

/// Bias gradient: `(N, C, H, W) -> (C)`, summed image by image in order.
struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "channel-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let grad = f32_slice(storage, layout, self.name())?;
        let hw = h * w;
        let mut sums = vec![0f32; c];
        for image in grad.chunks_exact(c * hw).take(n) {
            for (s, plane) in sums.iter_mut().zip(image.chunks_exact(hw)) {
                *s += sum(plane);
            }
        }
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_grads_close, max_diff};
    use candle_core::{Device, Var};


    /// candle's reference: stock conv2d, broadcast bias, relu.
    fn reference(xs: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Tensor {
        let ys = xs.conv2d(w, 1, 1, 1, 1).unwrap();
        let ys = ys
            .broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
            .unwrap();
        if relu {
            ys.relu().unwrap()
        } else {
            ys
        }
    }

    /// Values and all three gradients against candle's conv2d on random shapes, with and
    /// without ReLU, odd and even sizes. Tolerance 1e-4 absolute: both sides are f32 sums
    /// of at most a few hundred products of O(1) values in different orders.
    #[test]
    fn matches_candle_conv2d_values_and_gradients() {
        let dev = Device::Cpu;
        for &(n, c_in, c_out, h, w, relu) in &[
            (2, 1, 4, 5, 5, true),
            (3, 3, 5, 7, 6, true),
            (5, 4, 2, 4, 9, false),
            (9, 2, 3, 3, 3, true),
            (1, 6, 8, 1, 2, false),
        ] {
            let xs = Var::randn(0f32, 1.0, (n, c_in, h, w), &dev).unwrap();
            let wt = Var::randn(0f32, 0.5, (c_out, c_in, 3, 3), &dev).unwrap();
            let b = Var::randn(0f32, 0.5, c_out, &dev).unwrap();
            // A random linear functional of the output makes every gradient entry count.
            let probe = Tensor::randn(0f32, 1.0, (n, c_out, h, w), &dev).unwrap();

            let ours = conv3x3_same(&xs, &wt, &b, relu).unwrap();
            let theirs = reference(&xs, &wt, &b, relu);
            assert!(
                max_diff(&ours, &theirs) < 1e-4,
                "forward {n} {c_in} {c_out} {h} {w}"
            );

            let vars = [("xs", &xs), ("weight", &wt), ("bias", &b)];
            assert_grads_close(ours, theirs, &probe, &vars, 1e-4, &format!("{n} {c_in} {c_out} {h} {w}"));
        }
    }

    /// The fused conv+ReLU+pool equals the separate ops in values and all gradients.
    #[test]
    fn fused_conv_relu_pool_matches_separate_ops() {
        let dev = Device::Cpu;
        for &(n, c_in, c_out, h, w) in &[
            (2, 1, 4, 6, 6),
            (3, 3, 5, 7, 7),
            (5, 4, 2, 4, 9),
            (1, 2, 3, 1, 1),
        ] {
            let xs = Var::randn(0f32, 1.0, (n, c_in, h, w), &dev).unwrap();
            let wt = Var::randn(0f32, 0.5, (c_out, c_in, 3, 3), &dev).unwrap();
            let b = Var::randn(0f32, 0.5, c_out, &dev).unwrap();
            let ours = conv3x3_relu_pool(&xs, &wt, &b).unwrap();
            let pooled =
                crate::kernels::max_pool2x2_same(&conv3x3_same(&xs, &wt, &b, true).unwrap())
                    .unwrap();
            assert!(
                max_diff(&ours, &pooled) < 1e-5,
                "forward {n} {c_in} {c_out} {h} {w}"
            );
            let probe = Tensor::randn(0f32, 1.0, ours.shape(), &dev).unwrap();
            let vars = [("xs", &xs), ("weight", &wt), ("bias", &b)];
            assert_grads_close(ours, pooled, &probe, &vars, 1e-5, &format!("{n} {c_in} {c_out} {h} {w}"));
        }
    }

    /// The weight gradient does not depend on the number of threads (fixed groups).
    #[test]
    fn weight_gradient_is_deterministic_across_thread_counts() {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1.0, (13, 3, 6, 6), &dev).unwrap();
        let grad = Tensor::randn(0f32, 1.0, (13, 5, 6, 6), &dev).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| xs.apply_op2_no_bwd(&grad, &Conv3x3BwdWeight).unwrap())
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    #[test]
    fn rejects_wrong_shapes() {
        let dev = Device::Cpu;
        let xs = Tensor::zeros((1, 2, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let err = conv3x3_same(&xs, &w, &b, true).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
    }
}
