//! 2x2 max-pooling, stride 2, with Keras' "same" padding: an odd side of n gives
//! ceil(n/2) outputs, the last window holding only the valid elements (so 7x7 -> 4x4;
//! even sides are plain 2x2 pooling). The backward pass sends each output gradient to the
//! first maximal element of its window in row-major order, as TensorFlow does.

use super::{f32_slice, ELEMENTS_PER_TASK};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Max-pools `xs` (N, C, H, W) to (N, C, ceil(H/2), ceil(W/2)); differentiable.
pub fn max_pool2x2_same(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(MaxPool2x2)
}

/// Index (within the plane) of the first maximal element of output cell (oy, ox).
#[inline]
fn argmax(plane: &[f32], h: usize, w: usize, oy: usize, ox: usize) -> usize {
    let (y0, x0) = (2 * oy, 2 * ox);
    let mut best = y0 * w + x0;
    for (y, x) in [(y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)] {
        if y < h && x < w && plane[y * w + x] > plane[best] {
            best = y * w + x;
        }
    }
    best
}

/// Planes per task: at least [`ELEMENTS_PER_TASK`] elements of input.
fn planes_per_task(hw: usize) -> usize {
    ELEMENTS_PER_TASK.div_ceil(hw).max(1)
}

fn plane_dims(op: &str, layout: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = layout.shape().dims4()?;
    if h == 0 || w == 0 || n * c == 0 {
        bail!("{op}: empty input {:?}", layout.shape())
    }
    Ok((n, c, h, w))
}

struct MaxPool2x2;

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "max-pool2x2-same"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = plane_dims(self.name(), layout)?;
        let xs = f32_slice(storage, layout, self.name())?;
        let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
        let per_task = planes_per_task(h * w);
        let mut ys = vec![0f32; n * c * oh * ow];
        ys.par_chunks_mut(per_task * oh * ow)
            .zip(xs.par_chunks(per_task * h * w))
            .for_each(|(y, x)| {
                for (out, plane) in y.chunks_exact_mut(oh * ow).zip(x.chunks_exact(h * w)) {
                    if h % 2 == 0 && w % 2 == 0 {
                        // Common case: full windows, a branch-free loop over row pairs.
                        for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
                            let r0 = &plane[2 * oy * w..][..w];
                            let r1 = &plane[(2 * oy + 1) * w..][..w];
                            for (ox, o) in out_row.iter_mut().enumerate() {
                                *o = r0[2 * ox]
                                    .max(r0[2 * ox + 1])
                                    .max(r1[2 * ox].max(r1[2 * ox + 1]));
                            }
                        }
                    } else {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                out[oy * ow + ox] = plane[argmax(plane, h, w, oy, ox)];
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(ys), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, xs: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(xs.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &MaxPool2x2Bwd,
        )?))
    }
}

/// `(xs (N, C, H, W), grad (N, C, ceil(H/2), ceil(W/2))) -> grad_xs (N, C, H, W)`.
struct MaxPool2x2Bwd;

impl CustomOp2 for MaxPool2x2Bwd {
    fn name(&self) -> &'static str {
        "max-pool2x2-same-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = plane_dims(self.name(), l1)?;
        let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
        if l2.shape().dims() != [n, c, oh, ow] {
            bail!(
                "{}: gradient {:?} does not fit input {:?}",
                self.name(),
                l2.shape(),
                l1.shape()
            )
        }
        let xs = f32_slice(s1, l1, self.name())?;
        let grad = f32_slice(s2, l2, self.name())?;
        let per_task = planes_per_task(h * w);
        let mut grad_xs = vec![0f32; n * c * h * w];
        grad_xs
            .par_chunks_mut(per_task * h * w)
            .zip(
                xs.par_chunks(per_task * h * w)
                    .zip(grad.par_chunks(per_task * oh * ow)),
            )
            .for_each(|(gx, (x, g))| {
                for ((gx, plane), g) in gx
                    .chunks_exact_mut(h * w)
                    .zip(x.chunks_exact(h * w))
                    .zip(g.chunks_exact(oh * ow))
                {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            gx[argmax(plane, h, w, oy, ox)] = g[oy * ow + ox];
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(grad_xs), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Reference from candle's stock ops: pad bottom/right with -inf to an even size, view
    /// each 2x2 window as two axes and take the max over them. (Not candle's `max_pool2d`:
    /// its backward in candle 0.9 multiplies the gradient by (number of maxima)/4, so a
    /// unique maximum receives a quarter of the gradient; see `backprop.rs`, `MaxPool2D`.)
    fn reference(xs: &Tensor) -> Tensor {
        let (_, _, h, w) = xs.dims4().unwrap();
        let mut xs = xs.clone();
        if h % 2 == 1 {
            let (n, c, _, w) = xs.dims4().unwrap();
            let pad = Tensor::full(f32::NEG_INFINITY, (n, c, 1, w), xs.device()).unwrap();
            xs = Tensor::cat(&[&xs, &pad], 2).unwrap();
        }
        if w % 2 == 1 {
            let (n, c, h, _) = xs.dims4().unwrap();
            let pad = Tensor::full(f32::NEG_INFINITY, (n, c, h, 1), xs.device()).unwrap();
            xs = Tensor::cat(&[&xs, &pad], 3).unwrap();
        }
        let (n, c, h, w) = xs.dims4().unwrap();
        xs.reshape((n, c, h / 2, 2, w / 2, 2))
            .unwrap()
            .max(5)
            .unwrap()
            .max(3)
            .unwrap()
    }

    /// Values and gradients equal the reference exactly:
    /// pooling only selects values, and random normal inputs have no ties.
    #[test]
    fn matches_candle_max_pool2d() {
        let dev = Device::Cpu;
        for &(n, c, h, w) in &[
            (2, 3, 28, 28),
            (3, 5, 7, 7),
            (1, 2, 6, 5),
            (4, 1, 1, 1),
            (2, 2, 3, 8),
        ] {
            let xs = Var::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
            let ours = max_pool2x2_same(&xs).unwrap();
            let theirs = reference(&xs);
            assert_eq!(ours.dims(), &[n, c, h.div_ceil(2), w.div_ceil(2)]);
            let diff = (&ours - &theirs)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(D::Minus1)
                .unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "forward {n} {c} {h} {w}"
            );

            let probe = Tensor::randn(0f32, 1.0, ours.shape(), &dev).unwrap();
            let (g1, g2) = crate::kernels::testing::probe_grads(ours, theirs, &probe);
            let (g1, g2) = (g1.get(&xs).unwrap(), g2.get(&xs).unwrap());
            let same = g1.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                == g2.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(same, "gradient differs for {n} {c} {h} {w}");
        }
    }

    /// Ties (e.g. all-zero windows after a ReLU) send the gradient to the first element only.
    #[test]
    fn ties_go_to_the_first_element() {
        let dev = Device::Cpu;
        let xs = Var::zeros((1, 1, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let grads = max_pool2x2_same(&xs)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = grads
            .get(&xs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(g, vec![1.0, 0.0, 0.0, 0.0]);
    }
}
