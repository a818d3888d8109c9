use std::time::Instant;
use fl_agent::kernels::{self, ConvDims};
fn main() {
    for &n in &[std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(500usize)] {
        let mut total = 0.0;
        for &(c_in, c_out, side) in &[(1usize, 32usize, 28usize), (32, 64, 14), (64, 128, 7)] {
            if std::env::var("ONLY").map(|v| v != c_in.to_string()).unwrap_or(false) { continue; }
            let d = ConvDims { n, c_in, c_out, h: side, w: side };
            let xs: Vec<f32> = (0..n * c_in * side * side).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
            let w: Vec<f32> = (0..c_out * c_in * 9).map(|i| ((i * 31) % 100) as f32 / 100.0 - 0.5).collect();
            let b = vec![0.01f32; c_out];
            let mut ys = vec![0f32; n * d.pooled_per_image()];
            let mut am = vec![0u8; ys.len()];
            let reps = if n == 32 { 400 } else { 30 } * std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1usize);
            kernels::conv_relu_pool_forward(d, &xs, &w, &b, &mut ys, &mut am);
            let t = Instant::now();
            for _ in 0..reps { kernels::conv_relu_pool_forward(d, &xs, &w, &b, &mut ys, &mut am); }
            let per = t.elapsed().as_secs_f64() / reps as f64;
            let flop = 2.0 * (n * c_out * c_in * 9 * side * side) as f64;
            // backward
            let g = vec![0.1f32; ys.len()];
            let mut gx = vec![0f32; xs.len()];
            let mut gw = vec![0f32; w.len()];
            let mut gb = vec![0f32; c_out];
            let t = Instant::now();
            for _ in 0..reps { kernels::conv_relu_pool_backward(d, &xs, &w, &am, &g, if c_in > 1 { Some(&mut gx) } else { None }, &mut gw, &mut gb); }
            let bper = t.elapsed().as_secs_f64() / reps as f64;
            total += per;
            println!("n {n} conv {c_in}->{c_out} {side}: fwd {:.3} ms ({:.0} GF/s), bwd {:.3} ms", per * 1e3, flop / per / 1e9, bper * 1e3);
        }
        println!("n {n}: conv fwd total {:.3} ms = {:.0} img/s", total * 1e3, n as f64 / total);
    }
}
#[allow(dead_code)]
fn only() {}
