use std::time::Instant;
fn g(m: usize, n: usize, k: usize, dst: &mut [f32], a: &[f32], ars: usize, acs: usize, b: &[f32], brs: usize, bcs: usize) {
    unsafe {
        gemm::gemm(m, n, k, dst.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), acs as isize, ars as isize, b.as_ptr(), bcs as isize, brs as isize, 1.0, 1.0, false, false, false, gemm::Parallelism::None);
    }
}
fn main() {
    for &(cout, k, cols) in &[(32usize, 9usize, 784usize), (64, 288, 392), (64, 288, 784), (128, 576, 392), (128, 576, 490), (128,576,784)] {
        let a = vec![0.5f32; cout * k];
        let b = vec![0.25f32; k * cols];
        let mut d = vec![0f32; cout * cols];
        let reps = 2000;
        // W (cout x k) * col (k x cols)
        let t = Instant::now();
        for _ in 0..reps { g(cout, cols, k, &mut d, &a, k, 1, &b, cols, 1); }
        let f1 = 2.0 * (cout * k * cols * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        // transposed: (cols x cout) = col^T (cols x k) * W^T (k x cout); col stored k x cols
        let t = Instant::now();
        for _ in 0..reps { g(cols, cout, k, &mut d, &b, 1, cols, &a, 1, k); }
        let f2 = 2.0 * (cout * k * cols * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        // transposed with col stored cols x k (row-major patches)
        let t = Instant::now();
        for _ in 0..reps { g(cols, cout, k, &mut d, &b, k, 1, &a, 1, k); }
        let f3 = 2.0 * (cout * k * cols * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!("cout {cout} k {k} cols {cols}: W*col {f1:.1} GF/s, colT*WT {f2:.1}, patches*WT {f3:.1}");
    }
}
