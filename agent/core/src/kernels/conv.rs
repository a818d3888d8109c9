//! 3x3 convolution with "same" padding (zero padding 1, stride 1), bias, ReLU and a 2x2
//! max-pool with Keras' "same" padding (7 -> 4), fused, forward and backward.
//!
//! Activations are channels-last (NHWC: each pixel's channels side by side), so that
//! a pixel's 3x3 patch is three contiguous runs of `3 * C` values (one per kernel row)
//! and pooling compares whole rows of channels. Per fixed group of images:
//! - forward: the group's patch rows (one per output pixel, `9 * Cin` values ordered
//!   (ky, kx, c)) times the weights (one GEMM), then bias, ReLU and pool straight out
//!   of the GEMM's output, which stays in a per-thread scratch buffer; the window argmax
//!   is kept for the backward pass;
//! - backward: the pooled gradient scattered through the argmax into a scratch matrix,
//!   one GEMM for the weight gradient against the patch rows, one for the patch
//!   gradients, then their scatter-add back onto the input pixels.
//!
//! Weights and their gradients stay in candle's OIHW layout (the model file's); they are
//! reordered to the patch order, a few thousand values, once per call. Measured on two
//! cores against the earlier channels-first im2col (9 x Cin rows of H x W): the patch
//! copies are 3 runs of 3 x Cin values instead of 9 x Cin runs of W (7 at the third
//! layer), and the GEMM runs 10-20% faster in this orientation.
//!
//! [`conv3x3_relu_pool`] wraps the same kernels as a candle op on NCHW tensors
//! (transposing at its edges), which the tests check against candle's stock conv2d.

use super::linalg::{add_assign, multiversion, sgemm, with_scratch};
use super::{f32_slice, IMAGES_PER_PARTIAL};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

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
    /// Whether the 2x2 "same" max-pool follows (without it the output is the
    /// convolution's, after bias and ReLU).
    pub pool: bool,
}

impl Dims {
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Values in a patch row (the GEMM's inner dimension).
    fn k(&self) -> usize {
        self.c_in * 9
    }
    /// Height and width of the output: after the 2x2 "same" max-pool if there is one.
    pub fn pooled(&self) -> (usize, usize) {
        if self.pool {
            (self.h.div_ceil(2), self.w.div_ceil(2))
        } else {
            (self.h, self.w)
        }
    }
    /// Values per image after the pool.
    pub fn pooled_per_image(&self) -> usize {
        let (oh, ow) = self.pooled();
        self.c_out * oh * ow
    }
}

/// Images per GEMM for a batch of `n`: enough rows (images x H*W, about 512) to amortise
/// the packing of the weights in the small late layers, spread evenly over the batch
/// (32 images of 7x7 make 4 groups of 8, not 10+10+10+2, which would leave a core
/// idle). Depends on the shapes only, never on the thread count.
fn images_per_gemm(hw: usize, n: usize) -> usize {
    let target = (512 / hw).clamp(1, 16);
    n.div_ceil(n.div_ceil(target)).max(1)
}

/// Marks a pooled output whose ReLU was closed (output 0): no gradient flows back.
const NO_GRADIENT: u8 = 4;

/// OIHW weights as a `c_out x 9*c_in` matrix whose columns follow the patch order
/// (ky, kx, c).
fn to_patch_order(weight: &[f32], c_in: usize) -> Vec<f32> {
    let mut out = vec![0f32; weight.len()];
    for (src, dst) in weight.chunks_exact(c_in * 9).zip(out.chunks_exact_mut(c_in * 9)) {
        for (c, taps) in src.chunks_exact(9).enumerate() {
            for (tap, &v) in taps.iter().enumerate() {
                dst[tap * c_in + c] = v;
            }
        }
    }
    out
}

/// The inverse of [`to_patch_order`], into `weight` (OIHW).
fn from_patch_order(patch: &[f32], c_in: usize, weight: &mut [f32]) {
    for (src, dst) in patch.chunks_exact(c_in * 9).zip(weight.chunks_exact_mut(c_in * 9)) {
        for (c, taps) in dst.chunks_exact_mut(9).enumerate() {
            for (tap, v) in taps.iter_mut().enumerate() {
                *v = src[tap * c_in + c];
            }
        }
    }
}

/// Fills `rows` (H*W rows of 9*C values) with the zero-padded 3x3 patches of one NHWC
/// image: `rows[y*W + x][(ky*3 + kx)*C + c] = image[y+ky-1][x+kx-1][c]` (0 outside).
#[inline(always)]
fn im2row_body(image: &[f32], c: usize, h: usize, w: usize, rows: &mut [f32]) {
    for (p, row) in rows.chunks_exact_mut(9 * c).take(h * w).enumerate() {
        let (y, x) = (p / w, p % w);
        for (ky, dst) in row.chunks_exact_mut(3 * c).enumerate() {
            let iy = y + ky; // row in the padded image
            if iy == 0 || iy > h {
                dst.fill(0.0);
                continue;
            }
            let line = &image[(iy - 1) * w * c..][..w * c];
            if x >= 1 && x + 1 < w {
                dst.copy_from_slice(&line[(x - 1) * c..][..3 * c]);
                continue;
            }
            for (kx, d) in dst.chunks_exact_mut(c).enumerate() {
                let ix = x + kx;
                if ix == 0 || ix > w {
                    d.fill(0.0);
                } else {
                    d.copy_from_slice(&line[(ix - 1) * c..][..c]);
                }
            }
        }
    }
}

/// A single-channel `h x w` image with a zero border of one pixel, so that every pixel
/// takes all nine taps without a branch; and its row length, `w + 2`.
fn pad_image(image: &[f32], h: usize, w: usize) -> (Vec<f32>, usize) {
    let pw = w + 2;
    let mut padded = vec![0f32; (h + 2) * pw];
    for (src, dst) in image.chunks_exact(w).take(h).zip(padded[pw..].chunks_exact_mut(pw)) {
        dst[1..=w].copy_from_slice(src);
    }
    (padded, pw)
}

/// The weight gradient of [`conv_direct`] for one image, added into `acc` (9 x C_OUT,
/// tap-major): `acc[t][o] += sum over pixels p of image[neighbour t of p] * g[p][o]`,
/// the nine taps' sums in registers.
#[inline(always)]
fn weight_grad_direct<const C_OUT: usize>(image: &[f32], h: usize, w: usize, g: &[f32], acc: &mut [f32]) {
    let (padded, pw) = pad_image(image, h, w);
    let mut sums = [[0f32; C_OUT]; 9];
    for (p, g) in g.chunks_exact(C_OUT).take(h * w).enumerate() {
        let at = (p / w) * pw + p % w;
        for (tap, s) in sums.iter_mut().enumerate() {
            let v = padded[at + (tap / 3) * pw + tap % 3];
            for (s, &gv) in s.iter_mut().zip(g) {
                *s += v * gv;
            }
        }
    }
    for (a, s) in acc.chunks_exact_mut(C_OUT).zip(&sums) {
        add_assign(a, s);
    }
}

/// Scatters one image's pooled gradient (ceil(H/2) x ceil(W/2) pixels of C) through
/// the forward's argmax onto the convolution output's pixels (H x W pixels of C, all
/// overwritten: the windows tile the image, so nothing needs zeroing first), and adds
/// the gradient that reaches each channel's bias (where the ReLU was open) to `bias`.
#[inline(always)]
fn unpool_body(grad: &[f32], am: &[u8], c: usize, h: usize, w: usize, g_img: &mut [f32], bias: &mut [f32]) {
    let ow = w.div_ceil(2);
    for (q, (gq, aq)) in grad.chunks_exact(c).zip(am.chunks_exact(c)).enumerate() {
        let (y0, x0) = (2 * (q / ow), 2 * (q % ow));
        for (index, (dy, dx)) in [(0u8, (0, 0)), (1, (0, 1)), (2, (1, 0)), (3, (1, 1))] {
            if y0 + dy < h && x0 + dx < w {
                let row = &mut g_img[((y0 + dy) * w + x0 + dx) * c..][..c];
                for ((r, &g), &a) in row.iter_mut().zip(gq).zip(aq) {
                    *r = if a == index { g } else { 0.0 };
                }
            }
        }
        for ((b, &g), &a) in bias.iter_mut().zip(gq).zip(aq) {
            *b += if a != NO_GRADIENT { g } else { 0.0 };
        }
    }
}

/// The convolution of one single-channel image (the first layer) without patches, for
/// `C_OUT` output channels: each pixel's `C_OUT` sums live in registers while its nine
/// taps are added, a broadcast multiply-add each. `taps[t][o]` is output channel `o`'s
/// weight of tap `t` (tap-major). Output NHWC, `h * w * C_OUT` values.
#[inline(always)]
fn conv_direct<const C_OUT: usize>(image: &[f32], h: usize, w: usize, taps: &[[f32; C_OUT]; 9], out: &mut [f32]) {
    let (padded, pw) = pad_image(image, h, w);
    for (p, dst) in out.chunks_exact_mut(C_OUT).take(h * w).enumerate() {
        let at = (p / w) * pw + p % w; // top-left tap in the padded image
        let mut acc = [0f32; C_OUT];
        for (tap, weights) in taps.iter().enumerate() {
            let v = padded[at + (tap / 3) * pw + tap % 3];
            for (a, wv) in acc.iter_mut().zip(weights) {
                *a += v * wv;
            }
        }
        // An element loop, not copy_from_slice: that would be a memcpy call per pixel.
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = a;
        }
    }
}

/// The adjoint of [`im2row`]: adds each patch row's gradient back onto the pixels it was
/// copied from, into one image's gradient (overwritten).
#[inline(always)]
fn row2im_body(rows: &[f32], c: usize, h: usize, w: usize, image: &mut [f32]) {
    image.fill(0.0);
    for (p, row) in rows.chunks_exact(9 * c).take(h * w).enumerate() {
        let (y, x) = (p / w, p % w);
        for (ky, src) in row.chunks_exact(3 * c).enumerate() {
            let iy = y + ky;
            if iy == 0 || iy > h {
                continue;
            }
            let line = &mut image[(iy - 1) * w * c..][..w * c];
            if x >= 1 && x + 1 < w {
                add_assign(&mut line[(x - 1) * c..][..3 * c], src);
                continue;
            }
            for (kx, s) in src.chunks_exact(c).enumerate() {
                let ix = x + kx;
                if ix != 0 && ix <= w {
                    add_assign(&mut line[(ix - 1) * c..][..c], s);
                }
            }
        }
    }
}

/// Bias, ReLU and 2x2 "same" max-pool of one image's convolution output `conv` (H*W
/// pixels of C channels) into `y` (ceil(H/2)*ceil(W/2) pixels of C), with the argmax.
#[inline(always)]
fn pool_image_body(conv: &[f32], c: usize, h: usize, w: usize, bias: &[f32], y: &mut [f32], am: &mut [u8]) {
    let ow = w.div_ceil(2);
    let pixel = |yy: usize, xx: usize| &conv[(yy * w + xx) * c..][..c];
    for (q, (out, at)) in y.chunks_exact_mut(c).zip(am.chunks_exact_mut(c)).enumerate() {
        let (y0, x0) = (2 * (q / ow), 2 * (q % ow));
        // A window cut by the bottom or right edge repeats its first element instead:
        // an equal later element never wins, so the result is the same.
        let p0 = pixel(y0, x0);
        let p1 = if x0 + 1 < w { pixel(y0, x0 + 1) } else { p0 };
        let p2 = if y0 + 1 < h { pixel(y0 + 1, x0) } else { p0 };
        let p3 = if x0 + 1 < w && y0 + 1 < h { pixel(y0 + 1, x0 + 1) } else { p0 };
        // One branch-free pass over the channels (it vectorises). Window order (0,0),
        // (0,1), (1,0), (1,1); a later element wins only if larger, so ties go to the
        // first maximum in row-major order, as in TensorFlow. relu(max(a) + b) ==
        // max(relu(a + b)): the bias is the same over the window.
        let windows = p0.iter().zip(p1).zip(p2.iter().zip(p3));
        for (((o, a), b), ((&v0, &v1), (&v2, &v3))) in out.iter_mut().zip(at.iter_mut()).zip(bias).zip(windows) {
            let (mut best, mut index) = (v0, 0u8);
            for (v, i) in [(v1, 1u8), (v2, 2), (v3, 3)] {
                let larger = v > best;
                best = if larger { v } else { best };
                index = if larger { i } else { index };
            }
            let s = best + b;
            *o = s.max(0.0);
            *a = if s > 0.0 { index } else { NO_GRADIENT };
        }
    }
}

/// Without a pool: `y = relu(conv + bias)` per pixel, and `am` 0 where the ReLU is open,
/// [`NO_GRADIENT`] where it is closed.
#[inline(always)]
fn relu_image_body(conv: &[f32], c: usize, bias: &[f32], y: &mut [f32], am: &mut [u8]) {
    for ((src, out), at) in conv.chunks_exact(c).zip(y.chunks_exact_mut(c)).zip(am.chunks_exact_mut(c)) {
        for (((o, a), &v), b) in out.iter_mut().zip(at.iter_mut()).zip(src).zip(bias) {
            let s = v + b;
            *o = s.max(0.0);
            *a = if s > 0.0 { 0 } else { NO_GRADIENT };
        }
    }
}

/// The backward of [`relu_image_body`]: the gradient where the ReLU was open, 0 elsewhere
/// (all of `g_img` overwritten), and its sum per channel added to `bias`.
#[inline(always)]
fn unrelu_body(grad: &[f32], am: &[u8], c: usize, g_img: &mut [f32], bias: &mut [f32]) {
    for ((gq, aq), row) in grad.chunks_exact(c).zip(am.chunks_exact(c)).zip(g_img.chunks_exact_mut(c)) {
        for (((r, &g), &a), b) in row.iter_mut().zip(gq).zip(aq).zip(bias.iter_mut()) {
            let open = if a != NO_GRADIENT { g } else { 0.0 };
            *r = open;
            *b += open;
        }
    }
}

multiversion!(fn relu_image(conv: &[f32], c: usize, bias: &[f32], y: &mut [f32], am: &mut [u8]) => relu_image_body);
multiversion!(fn unrelu(grad: &[f32], am: &[u8], c: usize, g_img: &mut [f32], bias: &mut [f32]) => unrelu_body);
multiversion!(fn im2row(image: &[f32], c: usize, h: usize, w: usize, rows: &mut [f32]) => im2row_body);
multiversion!(fn row2im(rows: &[f32], c: usize, h: usize, w: usize, image: &mut [f32]) => row2im_body);
multiversion!(fn pool_image(conv: &[f32], c: usize, h: usize, w: usize, bias: &[f32], y: &mut [f32], am: &mut [u8]) => pool_image_body);
multiversion!(fn unpool(grad: &[f32], am: &[u8], c: usize, h: usize, w: usize, g_img: &mut [f32], bias: &mut [f32]) => unpool_body);

/// The first layer's width: the direct kernels are compiled for it ([`is_direct`]).
const DIRECT_C_OUT: usize = 32;

#[inline(always)]
fn conv_direct32_body(image: &[f32], h: usize, w: usize, taps: &[[f32; DIRECT_C_OUT]; 9], out: &mut [f32]) {
    conv_direct(image, h, w, taps, out)
}
multiversion!(fn conv_direct32(image: &[f32], h: usize, w: usize, taps: &[[f32; DIRECT_C_OUT]; 9], out: &mut [f32]) => conv_direct32_body);

#[inline(always)]
fn weight_grad_direct32_body(image: &[f32], h: usize, w: usize, g: &[f32], acc: &mut [f32]) {
    weight_grad_direct::<DIRECT_C_OUT>(image, h, w, g, acc)
}
multiversion!(fn weight_grad_direct32(image: &[f32], h: usize, w: usize, g: &[f32], acc: &mut [f32]) => weight_grad_direct32_body);

/// Whether a layer runs without patches and GEMMs ([`conv_direct`],
/// [`weight_grad_direct`]): the paper's first layer, 1 -> 32 channels, whose 9-value
/// patches made a GEMM mostly packing (forward of 500 images: about 4.2 ms as a GEMM,
/// 2.7-3.9 ms direct, measured on two noisy cores).
fn is_direct(d: Dims) -> bool {
    d.c_in == 1 && d.c_out == DIRECT_C_OUT
}

/// Checks the slices of a convolution call against `d` (a caller's bug otherwise).
fn check_sizes(d: Dims, xs: &[f32], weight: &[f32], pooled: usize, what: &str) {
    assert_eq!(xs.len(), d.n * d.c_in * d.hw(), "conv {what}: input size");
    assert_eq!(weight.len(), d.c_out * d.k(), "conv {what}: weight size");
    assert_eq!(pooled, d.n * d.pooled_per_image(), "conv {what}: pooled size");
}

/// `max_pool2x2_same(relu(conv3x3_same(xs, weight) + bias))` on NHWC slices: `xs` holds
/// `d.n` images of `d.h x d.w x d.c_in`, `weight` is OIHW, `ys` and `argmax` take `d.n
/// * d.pooled_per_image()` values each (NHWC). `argmax` records, per pooled output, the
/// first maximal element of its window (`dy * 2 + dx`), or [`NO_GRADIENT`] where the
/// ReLU cut the output to zero: it is what [`conv_relu_pool_backward`] needs.
///
/// # Panics
/// If a slice length does not match `d` (a caller's bug: the tensor-level op and
/// `crate::network` size them from the same shapes).
pub fn conv_relu_pool_forward(d: Dims, xs: &[f32], weight: &[f32], bias: &[f32], ys: &mut [f32], argmax: &mut [u8]) {
    check_sizes(d, xs, weight, ys.len(), "forward");
    assert_eq!(bias.len(), d.c_out, "conv forward: bias size");
    assert_eq!(argmax.len(), ys.len(), "conv forward: argmax size");
    let (hw, k, c_out) = (d.hw(), d.k(), d.c_out);
    let out_per_image = d.pooled_per_image();
    let patch_weight = to_patch_order(weight, d.c_in);
    let direct = is_direct(d);
    // The direct kernel's weights, tap-major (for one input channel the patch order is
    // OIHW's: `weight[o * 9 + t]`); unused otherwise.
    let taps: [[f32; DIRECT_C_OUT]; 9] = std::array::from_fn(|t| std::array::from_fn(|o| if direct { weight[o * 9 + t] } else { 0.0 }));
    let group = images_per_gemm(hw, d.n);
    ys.par_chunks_mut(group * out_per_image)
        .zip(argmax.par_chunks_mut(group * out_per_image))
        .zip(xs.par_chunks(group * d.c_in * hw))
        .for_each(|((y, am), x)| {
            let rows = x.len() / d.c_in; // output pixels of the group
            let patch_values = if direct { 0 } else { rows * k };
            with_scratch(patch_values, rows * c_out, |patches, conv| {
                if direct {
                    for (image, out) in x.chunks_exact(d.c_in * hw).zip(conv.chunks_exact_mut(hw * c_out)) {
                        conv_direct32(image, d.h, d.w, &taps, out);
                    }
                } else {
                    for (image, dst) in x.chunks_exact(d.c_in * hw).zip(patches.chunks_exact_mut(hw * k)) {
                        im2row(image, d.c_in, d.h, d.w, dst);
                    }
                    // conv (pixels x Cout) = patches (pixels x K) * W^T (K x Cout)
                    sgemm(rows, c_out, k, conv, false, patches, k, 1, &patch_weight, 1, k);
                }
                for ((conv, y), am) in
                    conv.chunks_exact(hw * c_out).zip(y.chunks_exact_mut(out_per_image)).zip(am.chunks_exact_mut(out_per_image))
                {
                    if d.pool {
                        pool_image(conv, c_out, d.h, d.w, bias, y, am);
                    } else {
                        relu_image(conv, c_out, bias, y, am);
                    }
                }
            });
        });
}

/// The backward pass of [`conv_relu_pool_forward`]: from the input `xs`, the `weight`,
/// the forward's `argmax` and the gradient of the pooled output `grad` (all as there),
/// writes the weight (OIHW) and bias gradients and, if `grad_xs` is given, the input
/// gradient (NHWC), all overwritten.
///
/// Per fixed group of images, in parallel: the pooled gradient scattered through the
/// argmax into a (pixels x Cout) scratch matrix (the full-size unpooled gradient is
/// never zeroed and re-read as a tensor), the group's patch rows for the weight-gradient
/// GEMM, whose buffer then takes the patch gradients before they are scattered back.
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
    check_sizes(d, xs, weight, grad.len(), "backward");
    assert_eq!(argmax.len(), grad.len(), "conv backward: argmax size");
    assert_eq!(grad_weight.len(), weight.len(), "conv backward: weight gradient size");
    assert_eq!(grad_bias.len(), d.c_out, "conv backward: bias gradient size");
    let (hw, k, c_out, w) = (d.hw(), d.k(), d.c_out, d.w);
    let pooled_per_image = d.pooled_per_image();
    let patch_weight = to_patch_order(weight, d.c_in);
    let direct = is_direct(d);
    let group = images_per_gemm(hw, d.n).max(IMAGES_PER_PARTIAL);
    let need_input = grad_xs.is_some();
    let gx_chunks: Vec<&mut [f32]> = match grad_xs {
        Some(gx) => {
            assert_eq!(gx.len(), xs.len(), "conv backward: input gradient size");
            gx.chunks_mut(group * d.c_in * hw).collect()
        }
        None => (0..d.n.div_ceil(group)).map(|_| &mut [][..]).collect(),
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = gx_chunks
        .into_par_iter()
        .enumerate()
        .map(|(g_index, gx)| {
            let first = g_index * group;
            let m = group.min(d.n - first);
            let rows = m * hw;
            // Patch rows are needed for the weight gradient unless it runs direct, and
            // their buffer then takes the patch gradients.
            let patch_values = if direct && !need_input { 0 } else { rows * k };
            with_scratch(patch_values, rows * c_out, |patches, g_conv| {
                let mut partial_b = vec![0f32; c_out];
                let mut taps_w = vec![0f32; if direct { 9 * c_out } else { 0 }];
                for i in 0..m {
                    let image = first + i;
                    let gp = &grad[image * pooled_per_image..][..pooled_per_image];
                    let am = &argmax[image * pooled_per_image..][..pooled_per_image];
                    let gi = &mut g_conv[i * hw * c_out..][..hw * c_out];
                    if d.pool {
                        unpool(gp, am, c_out, d.h, w, gi, &mut partial_b);
                    } else {
                        unrelu(gp, am, c_out, gi, &mut partial_b);
                    }
                    let x = &xs[image * d.c_in * hw..][..d.c_in * hw];
                    if direct {
                        weight_grad_direct32(x, d.h, w, gi, &mut taps_w);
                    } else {
                        im2row(x, d.c_in, d.h, w, &mut patches[i * hw * k..][..hw * k]);
                    }
                }
                let mut partial_w = vec![0f32; c_out * k];
                if direct {
                    // Tap-major (9 x Cout) to the patch order (Cout x 9).
                    for (tap, row) in taps_w.chunks_exact(c_out).enumerate() {
                        for (o, &v) in row.iter().enumerate() {
                            partial_w[o * 9 + tap] = v;
                        }
                    }
                } else {
                    // partial (Cout x K) = g^T (Cout x pixels) * patches (pixels x K)
                    sgemm(c_out, k, rows, &mut partial_w, false, g_conv, 1, c_out, patches, k, 1);
                }
                if need_input {
                    // patch gradients (pixels x K) = g (pixels x Cout) * W (Cout x K)
                    sgemm(rows, k, c_out, patches, false, g_conv, c_out, 1, &patch_weight, k, 1);
                    for (src, gxi) in patches.chunks_exact(hw * k).zip(gx.chunks_exact_mut(d.c_in * hw)) {
                        row2im(src, d.c_in, d.h, w, gxi);
                    }
                }
                (partial_w, partial_b)
            })
        })
        .collect();
    let mut total_w = vec![0f32; c_out * k];
    grad_bias.fill(0.0);
    for (pw, pb) in &partials {
        add_assign(&mut total_w, pw);
        add_assign(grad_bias, pb);
    }
    from_patch_order(&total_w, d.c_in, grad_weight);
}

/// `src` (images of C channel planes of HW values, NCHW) into `dst` (NHWC).
pub fn nchw_to_nhwc(src: &[f32], c: usize, hw: usize, dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(c * hw).zip(dst.chunks_exact_mut(c * hw)) {
        for (ch, plane) in s.chunks_exact(hw).enumerate() {
            for (p, &v) in plane.iter().enumerate() {
                d[p * c + ch] = v;
            }
        }
    }
}

/// `src` (NHWC) into `dst` (NCHW): the inverse of [`nchw_to_nhwc`].
pub fn nhwc_to_nchw(src: &[f32], c: usize, hw: usize, dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(c * hw).zip(dst.chunks_exact_mut(c * hw)) {
        for (ch, plane) in d.chunks_exact_mut(hw).enumerate() {
            for (p, v) in plane.iter_mut().enumerate() {
                *v = s[p * c + ch];
            }
        }
    }
}

/// `max_pool2x2_same(relu(conv2d(xs, weight, padding 1) + bias))` as a differentiable
/// candle op on NCHW tensors: `xs` (N, Cin, H, W), `weight` (Cout, Cin, 3, 3), `bias`
/// (Cout) -> (N, Cout, ceil(H/2), ceil(W/2)). The same values as candle's conv2d, a
/// broadcast bias add, relu and Keras' "same" 2x2 max-pool, with gradients for all
/// three inputs (ties in a window go to its first maximum, as in TensorFlow).
// A candle op for the tests' comparison with candle's stock ops; training uses the slice
// functions above.
#[doc(hidden)]
pub fn conv3x3_relu_pool(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, ConvReluPool { saved: Mutex::new(None) })
}

/// The candle op; `saved` keeps the forward's NHWC input and argmax for the backward.
struct ConvReluPool {
    saved: Mutex<Option<(Vec<f32>, Vec<u8>)>>,
}

fn dims(op: &str, xs: &Layout, weight: &Layout) -> Result<Dims> {
    let (n, c_in, h, w) = xs.shape().dims4()?;
    let (c_out, w_in, kh, kw) = weight.shape().dims4()?;
    if w_in != c_in || kh != 3 || kw != 3 {
        bail!("{op}: weight shape {:?} does not fit input shape {:?}", weight.shape(), xs.shape())
    }
    if n == 0 || c_in == 0 || c_out == 0 || h == 0 || w == 0 {
        bail!("{op}: empty tensor (input {:?}, weight {:?})", xs.shape(), weight.shape())
    }
    Ok(Dims { n, c_in, c_out, h, w, pool: true })
}

fn lock_error<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("conv3x3-relu-pool: state lock poisoned".into())
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
            bail!("{}: bias shape {:?}, expected ({},)", self.name(), l3.shape(), d.c_out)
        }
        let xs = f32_slice(s1, l1, self.name())?;
        let weight = f32_slice(s2, l2, self.name())?;
        let bias = f32_slice(s3, l3, self.name())?;
        let mut xs_nhwc = vec![0f32; xs.len()];
        nchw_to_nhwc(xs, d.c_in, d.hw(), &mut xs_nhwc);
        let mut ys = vec![0f32; d.n * d.pooled_per_image()];
        let mut argmax = vec![0u8; ys.len()];
        conv_relu_pool_forward(d, &xs_nhwc, weight, bias, &mut ys, &mut argmax);
        let (oh, ow) = d.pooled();
        let mut ys_nchw = vec![0f32; ys.len()];
        nhwc_to_nchw(&ys, d.c_out, oh * ow, &mut ys_nchw);
        *self.saved.lock().map_err(lock_error)? = Some((xs_nhwc, argmax));
        Ok((CpuStorage::F32(ys_nchw), Shape::from((d.n, d.c_out, oh, ow))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c_in, h, w) = xs.dims4()?;
        let c_out = weight.dim(0)?;
        let d = Dims { n, c_in, c_out, h, w, pool: true };
        let (oh, ow) = d.pooled();
        let saved = self.saved.lock().map_err(lock_error)?;
        let Some((xs_nhwc, argmax)) = saved.as_ref() else { bail!("{}: backward before forward", self.name()) };
        let grad_res = grad_res.contiguous()?;
        let grad_nchw = grad_res.flatten_all()?.to_vec1::<f32>()?;
        if grad_nchw.len() != argmax.len() {
            bail!("{}: gradient {:?} does not fit the forward pass", self.name(), grad_res.shape())
        }
        let mut grad = vec![0f32; grad_nchw.len()];
        nchw_to_nhwc(&grad_nchw, c_out, oh * ow, &mut grad);
        let weights = weight.flatten_all()?.to_vec1::<f32>()?;
        let mut grad_w = vec![0f32; weights.len()];
        let mut grad_b = vec![0f32; c_out];
        let mut grad_xs = xs.track_op().then(|| vec![0f32; xs_nhwc.len()]);
        conv_relu_pool_backward(d, xs_nhwc, &weights, argmax, &grad, grad_xs.as_deref_mut(), &mut grad_w, &mut grad_b);
        let grad_xs = match grad_xs {
            Some(nhwc) => {
                let mut nchw = vec![0f32; nhwc.len()];
                nhwc_to_nchw(&nhwc, c_in, h * w, &mut nchw);
                Some(Tensor::from_vec(nchw, (n, c_in, h, w), xs.device())?)
            }
            None => None,
        };
        Ok((grad_xs, Some(Tensor::from_vec(grad_w, weight.shape(), xs.device())?), Some(Tensor::from_vec(grad_b, c_out, xs.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_grads_close, max_diff};
    use candle_core::{Device, Var};

    /// Keras' "same" 2x2 max-pool in candle's stock ops: pad odd sides with -inf, then
    /// the maximum over each window (reshape + max, whose gradient goes to the maximum;
    /// candle's own max_pool2d backward scales gradients wrongly, see `crate::network`).
    fn pool_reference(xs: &Tensor) -> Tensor {
        let (n, c, h, w) = xs.dims4().unwrap();
        let mut xs = xs.clone();
        if h % 2 == 1 {
            let pad = Tensor::full(f32::NEG_INFINITY, (n, c, 1, w), xs.device()).unwrap();
            xs = Tensor::cat(&[&xs, &pad], 2).unwrap();
        }
        if w % 2 == 1 {
            let pad = Tensor::full(f32::NEG_INFINITY, (n, c, h.div_ceil(2) * 2, 1), xs.device()).unwrap();
            xs = Tensor::cat(&[&xs, &pad], 3).unwrap();
        }
        let (n, c, h, w) = xs.dims4().unwrap();
        xs.reshape((n, c, h / 2, 2, w / 2, 2)).unwrap().max(5).unwrap().max(3).unwrap()
    }

    /// candle's reference: stock conv2d, broadcast bias, relu, then [`pool_reference`].
    fn reference(xs: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        let ys = xs.conv2d(w, 1, 1, 1, 1).unwrap();
        let ys = ys.broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap()).unwrap();
        pool_reference(&ys.relu().unwrap())
    }

    /// Values and all three gradients against candle's stock ops, on even, odd, tiny and
    /// one-channel shapes (the first layer's) and on the paper's layer sizes. Tolerance
    /// 1e-4 absolute: f32 sums of at most a few hundred O(1) products in other orders.
    #[test]
    fn matches_candle_conv2d_relu_and_pool() {
        let dev = Device::Cpu;
        for &(n, c_in, c_out, h, w) in &[
            (2, 1, 4, 6, 6),
            (3, 3, 5, 7, 7),
            (5, 4, 2, 4, 9),
            (1, 2, 3, 1, 1),
            (9, 2, 3, 3, 3),
            (2, 1, 32, 28, 28),
            (2, 32, 64, 14, 14),
            (3, 64, 128, 7, 7),
        ] {
            let xs = Var::randn(0f32, 1.0, (n, c_in, h, w), &dev).unwrap();
            let wt = Var::randn(0f32, 0.2, (c_out, c_in, 3, 3), &dev).unwrap();
            let b = Var::randn(0f32, 0.2, c_out, &dev).unwrap();
            let ours = conv3x3_relu_pool(&xs, &wt, &b).unwrap();
            let theirs = reference(&xs, &wt, &b);
            let case = format!("{n} {c_in} {c_out} {h} {w}");
            assert!(max_diff(&ours, &theirs) < 1e-4, "forward {case}");
            let probe = Tensor::randn(0f32, 1.0, ours.shape(), &dev).unwrap();
            let vars = [("xs", &xs), ("weight", &wt), ("bias", &b)];
            assert_grads_close(ours, theirs, &probe, &vars, 1e-3, &case);
        }
    }

    /// Ties in a window go to its first maximum (TensorFlow's choice): a constant image
    /// sends each window's gradient to its top-left element only.
    #[test]
    fn ties_go_to_the_first_element() {
        let dev = Device::Cpu;
        let xs = Var::ones((1, 1, 4, 4), candle_core::DType::F32, &dev).unwrap();
        // A single centre tap: the convolution copies the (positive) image.
        let mut taps = vec![0f32; 9];
        taps[4] = 1.0;
        let wt = Var::from_vec(taps, (1, 1, 3, 3), &dev).unwrap();
        let b = Var::zeros(1, candle_core::DType::F32, &dev).unwrap();
        let ys = conv3x3_relu_pool(&xs, &wt, &b).unwrap();
        let grads = ys.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(&xs).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected: Vec<f32> = (0..16).map(|i| if i % 2 == 0 && (i / 4) % 2 == 0 { 1.0 } else { 0.0 }).collect();
        assert_eq!(gx, expected);
    }

    /// The gradients do not depend on the number of threads (fixed groups, fixed order).
    #[test]
    fn backward_is_deterministic_across_thread_counts() {
        let d = Dims { n: 13, c_in: 3, c_out: 5, h: 6, w: 6, pool: true };
        let mut rng = crate::rng::Rng::new(1);
        let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.next_f32() - 0.5).collect() };
        let (xs, weight, bias) = (random(13 * 3 * 36), random(5 * 27), random(5));
        let grad = random(d.n * d.pooled_per_image());
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut ys = vec![0f32; grad.len()];
                let mut argmax = vec![0u8; grad.len()];
                conv_relu_pool_forward(d, &xs, &weight, &bias, &mut ys, &mut argmax);
                let (mut gx, mut gw, mut gb) = (vec![0f32; xs.len()], vec![0f32; weight.len()], vec![0f32; 5]);
                conv_relu_pool_backward(d, &xs, &weight, &argmax, &grad, Some(&mut gx), &mut gw, &mut gb);
                (ys, gx, gw, gb)
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    #[test]
    fn layout_transposes_are_inverse() {
        let src: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32).collect();
        let mut nhwc = vec![0f32; src.len()];
        nchw_to_nhwc(&src, 3, 4, &mut nhwc);
        assert_eq!(&nhwc[..6], &[0.0, 4.0, 8.0, 1.0, 5.0, 9.0]);
        let mut back = vec![0f32; src.len()];
        nhwc_to_nchw(&nhwc, 3, 4, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn rejects_wrong_shapes() {
        let dev = Device::Cpu;
        let xs = Tensor::zeros((1, 2, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let err = conv3x3_relu_pool(&xs, &w, &b).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
    }
}
