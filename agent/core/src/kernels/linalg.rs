//! Safe wrappers over the `gemm` crate's single-threaded f32 matrix product, plus small
//! vector helpers whose loops the compiler vectorises on x86 and ARM alike.

/// `dst (m x n, row-major, contiguous) = [dst +] a (m x k) * b (k x n)`, where `a` and `b`
/// are given by their row and column strides (so transposes cost nothing). Runs on the
/// calling thread: the kernels parallelise over images instead, which keeps results
/// independent of the thread count.
#[allow(clippy::too_many_arguments)]
pub(super) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_row_stride: usize,
    a_col_stride: usize,
    b: &[f32],
    b_row_stride: usize,
    b_col_stride: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let dst_len = m.checked_mul(n).filter(|&len| len <= dst.len());
    let Some(dst_len) = dst_len else { panic!("gemm destination too small") };
    if k == 0 {
        if !accumulate {
            dst[..dst_len].fill(0.0);
        }
        return;
    }
    // The largest element each operand is read at must be inside its slice: this is
    // what makes the raw-pointer call below sound. Checked arithmetic: a wrapped offset
    // would pass the comparison and let gemm read outside the slice.
    assert!(last_offset(m, k, a_row_stride, a_col_stride).is_some_and(|last| last < a.len()), "gemm lhs out of bounds");
    assert!(last_offset(k, n, b_row_stride, b_col_stride).is_some_and(|last| last < b.len()), "gemm rhs out of bounds");
    // gemm takes strides as isize: each must convert without changing sign.
    for stride in [n, a_row_stride, a_col_stride, b_row_stride, b_col_stride] {
        assert!(isize::try_from(stride).is_ok(), "gemm stride {stride} does not fit an isize");
    }
    // SAFETY: the bounds were checked above; dst does not alias a or b (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_col_stride as isize,
            a_row_stride as isize,
            b.as_ptr(),
            b_col_stride as isize,
            b_row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The offset of element `(rows - 1, cols - 1)` of a strided operand (`rows`, `cols` >= 1),
/// or `None` if it does not fit a `usize`.
fn last_offset(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<usize> {
    (rows - 1).checked_mul(row_stride)?.checked_add((cols - 1).checked_mul(col_stride)?)
}

/// `dst += src`, element-wise.
pub(super) fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

thread_local! {
    /// Per-thread scratch memory of the convolution passes, kept between calls so that a
    /// training step allocates (and zeroes) nothing of its size.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with two scratch buffers of `a` and `b` values from this thread's reusable
/// scratch memory. Their contents are arbitrary: `f` must write before it reads.
pub(super) fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < a + b {
                buf.resize(a + b, 0.0);
            }
            let (x, y) = buf[..a + b].split_at_mut(a);
            f(x, y)
        }
        // Re-entered on this thread (rayon may run another task while one waits): a
        // fresh buffer keeps the two apart.
        Err(_) => {
            let mut buf = vec![0f32; a + b];
            let (x, y) = buf.split_at_mut(a);
            f(x, y)
        }
    })
}

/// `fn $name(args) -> R` that runs `$body_fn` (which must be `#[inline(always)]`)
/// compiled for the best vector extension of the CPU it runs on: on x86-64, AVX-512
/// or AVX2 + FMA when the CPU has them (detected at run time, once; the Rust target's
/// baseline is SSE2, four lanes and no fused multiply-add), else the baseline. On ARM,
/// NEON is the aarch64 baseline already, so the body is called as it is.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body_fn:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                fn v4($($arg: $ty),*) $(-> $ret)? {
                    $body_fn($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? {
                    $body_fn($($arg),*)
                }
                if $crate::kernels::linalg::x86_level() >= 4 {
                    // SAFETY: the CPU has every feature v4 is compiled for (checked above).
                    return unsafe { v4($($arg),*) };
                }
                if $crate::kernels::linalg::x86_level() >= 3 {
                    // SAFETY: as above, for v3's features.
                    return unsafe { v3($($arg),*) };
                }
            }
            $body_fn($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// The x86-64 micro-architecture level the CPU supports for [`multiversion`]: 4 with
/// AVX-512 (F, BW, VL, DQ), 3 with AVX2 and FMA, 1 otherwise. Detected once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn x86_level() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(0);
    match LEVEL.load(Ordering::Relaxed) {
        0 => {
            let level = if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                4
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                3
            } else {
                1
            };
            LEVEL.store(level, Ordering::Relaxed);
            level
        }
        level => level,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_product_matches_the_definition() {
        // [1 2; 3 4] * [5 6; 7 8] = [19 22; 43 50], b given transposed through its strides.
        let (a, b_t) = ([1.0, 2.0, 3.0, 4.0], [5.0, 7.0, 6.0, 8.0]);
        let mut dst = [0.0f32; 4];
        sgemm(2, 2, 2, &mut dst, false, &a, 2, 1, &b_t, 1, 2);
        assert_eq!(dst, [19.0, 22.0, 43.0, 50.0]);
    }

    #[test]
    #[should_panic(expected = "gemm lhs out of bounds")]
    fn a_stride_whose_offset_overflows_is_refused() {
        // (m - 1) * stride wraps to 0 in unchecked release arithmetic, which would pass a
        // plain `< len` comparison.
        let mut dst = [0.0f32; 3];
        sgemm(3, 1, 1, &mut dst, false, &[1.0], 1 << (usize::BITS - 1), 1, &[1.0], 1, 1);
    }

    #[test]
    #[should_panic(expected = "gemm destination too small")]
    fn a_destination_size_that_overflows_is_refused() {
        sgemm(usize::MAX, 2, 0, &mut [0.0f32; 4], false, &[], 1, 1, &[], 1, 1);
    }
}
