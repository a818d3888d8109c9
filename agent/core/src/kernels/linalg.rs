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
    assert!(dst.len() >= m * n, "gemm destination too small");
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // The largest element each operand is read at must be inside its slice: this is
    // what makes the raw-pointer call below sound.
    assert!(
        (m - 1) * a_row_stride + (k - 1) * a_col_stride < a.len(),
        "gemm lhs out of bounds"
    );
    assert!(
        (k - 1) * b_row_stride + (n - 1) * b_col_stride < b.len(),
        "gemm rhs out of bounds"
    );
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
