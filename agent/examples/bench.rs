//! Training and evaluation speed of the agent's CNN, and the peak memory of a training
//! run: `make bench` (agent/bench/bench.sh) and the agent half of `make bench-vs-keras`.
//!
//! Modes (one per process, so that each peak-RSS figure is its own):
//! - `speed`: images/s of `fl_agent::train::train` at each batch size (after a warm-up
//!   run), and of `fl_agent::train::evaluate` on the test set;
//! - `rss`: one epoch on a 30,000-image IID shard, then the peak RSS of the training
//!   (VmHWM, reset after the data is loaded) and of the whole process;
//! - `profile`: where a training step's time goes (batch, forward, backward, optimizer)
//!   and per-layer timings of candle's stock conv/pool against `fl_agent::kernels`.
//!
//! Results go to stdout as `key=value` lines that `agent/bench/vs-keras.sh` parses.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Module, Tensor, Var};
use candle_nn::Optimizer;
use fl_agent::data::{partition, Dataset, Mnist, Split};
use fl_agent::kernels;
use fl_agent::model::Model;
use fl_agent::rng::Rng;
use fl_agent::train::{evaluate, train, TrainConfig};
use fl_agent::weights::ModelFile;

/// Command-line settings.
struct Args {
    mode: String,
    data: PathBuf,
    batch_sizes: Vec<usize>,
    /// Timed training images per batch size.
    train_images: usize,
    /// Timed evaluation images.
    eval_images: usize,
}

fn parse_args() -> Result<Args> {
    use lexopt::prelude::*;
    let mut args = Args {
        mode: "speed".into(),
        data: PathBuf::from("data/mnist"),
        batch_sizes: vec![32, 128],
        train_images: 6400,
        eval_images: 10_000,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Value(mode) if args.mode == "speed" => args.mode = mode.string()?,
            Long("data") => args.data = parser.value()?.into(),
            Long("batch-sizes") => {
                args.batch_sizes = parser
                    .value()?
                    .string()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .with_context(|| format!("--batch-sizes: {s:?} is not a number"))
                    })
                    .collect::<Result<_>>()?
            }
            Long("train-images") => args.train_images = parser.value()?.parse()?,
            Long("eval-images") => args.eval_images = parser.value()?.parse()?,
            Long("help") => {
                println!(
                    "usage: bench [speed|rss|profile] [--data DIR] [--batch-sizes 32,128] [--train-images N] [--eval-images N]"
                );
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
        bail!("--batch-sizes: expected positive numbers");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    eprintln!(
        "bench: rayon threads {} (set RAYON_NUM_THREADS to change)",
        rayon::current_num_threads()
    );
    match args.mode.as_str() {
        "speed" => speed(&args),
        "rss" => rss(&args),
        "profile" => profile(&args),
        other => bail!("unknown mode {other:?}: expected speed, rss or profile"),
    }
}

fn load(args: &Args) -> Result<Mnist> {
    Mnist::load(&args.data).with_context(|| {
        format!(
            "loading MNIST from {} (run `make setup`)",
            args.data.display()
        )
    })
}

/// A copy of the first `n` examples of `set` (all of them if there are fewer).
fn first(set: &Dataset, n: usize) -> Dataset {
    set.select(&(0..n.min(set.len())).collect::<Vec<_>>())
}

fn quiet(batch_size: usize) -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size,
        progress: None,
        ..TrainConfig::default()
    }
}

/// Training images/s per batch size, then evaluation images/s.
fn speed(args: &Args) -> Result<()> {
    let mnist = load(args)?;
    let start = ModelFile::initial(1)?;
    for &bs in &args.batch_sizes {
        // Warm-up: thread pool, allocator, caches; at least 10 steps.
        let warm = first(&mnist.train, 10 * bs);
        train(&start, &warm, None, &quiet(bs), &mut |_| {})?;
        let set = first(&mnist.train, args.train_images.max(bs));
        let t0 = Instant::now();
        train(&start, &set, None, &quiet(bs), &mut |_| {})?;
        let rate = set.len() as f64 / t0.elapsed().as_secs_f64();
        println!("train bs={bs} images_per_s={rate:.0}");
    }
    let test = first(&mnist.test, args.eval_images);
    evaluate(&start, &first(&mnist.test, 1000))?;
    let t0 = Instant::now();
    let evaluation = evaluate(&start, &test)?;
    let rate = test.len() as f64 / t0.elapsed().as_secs_f64();
    // 500 is fl_agent::train's evaluation batch.
    println!(
        "eval bs=500 images_per_s={rate:.0} (accuracy {:.4} of an untrained model)",
        evaluation.accuracy
    );
    Ok(())
}

/// Peak resident memory (kB) since start or the last reset, from /proc/self/status.
fn peak_rss_kb() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    line.split_whitespace()
        .nth(1)
        .context("malformed VmHWM line")?
        .parse()
        .context("malformed VmHWM value")
}

/// One epoch on a 30,000-image shard (the paper's two-learner IID split).
fn rss(args: &Args) -> Result<()> {
    let shard: Dataset = {
        let mnist = load(args)?;
        let parts = partition(mnist.train.labels(), 2, Split::Iid, 1)?;
        mnist.train.select(&parts[0])
    }; // The full training set is dropped here: a learner keeps only its shard.
    let test = first(&Mnist::load(&args.data)?.test, 1000);
    let process_peak_before = peak_rss_kb()?;
    // Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so the next reading is the
    // peak of training alone, data already in memory.
    std::fs::write("/proc/self/clear_refs", "5")
        .context("resetting the peak RSS via /proc/self/clear_refs")?;
    let bs = args.batch_sizes[0];
    let t0 = Instant::now();
    let trained = train(
        &ModelFile::initial(1)?,
        &shard,
        Some(&test),
        &quiet(bs),
        &mut |_| {},
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    let peak = peak_rss_kb()?;
    let accuracy = trained
        .epochs
        .last()
        .and_then(|e| e.test)
        .map(|t| t.accuracy)
        .unwrap_or(f64::NAN);
    println!(
        "rss shard={} bs={bs} peak_rss_mb={:.1} loading_peak_mb={:.1} seconds={seconds:.1} test_accuracy={accuracy:.4}",
        shard.len(),
        peak as f64 / 1024.0,
        process_peak_before as f64 / 1024.0
    );
    Ok(())
}

/// Milliseconds per call of `f`, best of `reps` after one warm-up call.
fn time_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// Where the time of a training step goes, and stock candle vs. kernels per layer.
fn profile(args: &Args) -> Result<()> {
    let mnist = load(args)?;
    let device = Device::Cpu;
    for &bs in &args.batch_sizes {
        let varmap = ModelFile::initial(1)?.to_varmap(&device)?;
        let model = Model::from_varmap(&varmap, &device)?;
        let params = candle_nn::ParamsAdamW {
            eps: 1e-7,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut candle_adam = candle_nn::AdamW::new(varmap.all_vars(), params.clone())?;
        let mut fused_adam = kernels::Adam::new(varmap.all_vars(), params)?;
        let indices: Vec<usize> = (0..bs).collect();
        let mut rng = Rng::new(1);
        let (xs, ys) = mnist.train.batch(&indices, &device)?;
        let mask = Model::dropout_mask(bs, &mut rng, &device)?;
        let reps = if std::env::var_os("BENCH_KERNELS_ONLY").is_some() {
            1
        } else {
            10
        };
        let batch = time_ms(reps, || {
            mnist.train.batch(&indices, &device)?;
            Model::dropout_mask(bs, &mut rng, &device)?;
            Ok(())
        })?;
        let forward = time_ms(reps, || {
            candle_nn::loss::cross_entropy(&model.forward(&xs, Some(&mask))?, &ys)?;
            Ok(())
        })?;
        let loss = candle_nn::loss::cross_entropy(&model.forward(&xs, Some(&mask))?, &ys)?;
        let backward = time_ms(reps, || {
            loss.backward()?;
            Ok(())
        })?;
        let grads = loss.backward()?;
        let step_candle = time_ms(reps, || Ok(candle_adam.step(&grads)?))?;
        let step_fused = time_ms(reps, || Ok(fused_adam.step(&grads)?))?;
        let total = batch + forward + backward + step_fused;
        // The same network written directly with the kernels (for comparison with
        // whatever `Model::forward` uses).
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?
            .clone();
        let v = |name: &str| -> Result<Tensor> {
            Ok(vars
                .get(name)
                .with_context(|| format!("no parameter {name}"))?
                .as_tensor()
                .clone())
        };
        let (w1, b1, w2, b2, w3, b3) = (
            v("conv1.weight")?,
            v("conv1.bias")?,
            v("conv2.weight")?,
            v("conv2.bias")?,
            v("conv3.weight")?,
            v("conv3.bias")?,
        );
        let (wf1, bf1, wf2, bf2) = (
            v("fc1.weight")?,
            v("fc1.bias")?,
            v("fc2.weight")?,
            v("fc2.bias")?,
        );
        let fast_forward = || -> Result<Tensor> {
            let h = kernels::max_pool2x2_same(&kernels::conv3x3_same(&xs, &w1, &b1, true)?)?;
            let h = kernels::max_pool2x2_same(&kernels::conv3x3_same(&h, &w2, &b2, true)?)?;
            let h = kernels::max_pool2x2_same(&kernels::conv3x3_same(&h, &w3, &b3, true)?)?;
            let h = (kernels::linear(&h.flatten_from(1)?, &wf1, &bf1, true)? * &mask)?;
            Ok(candle_nn::loss::cross_entropy(
                &kernels::linear(&h, &wf2, &bf2, false)?,
                &ys,
            )?)
        };
        let forward_k = time_ms(reps, || fast_forward().map(|_| ()))?;
        let loss_k = fast_forward()?;
        let backward_k = time_ms(reps, || Ok(loss_k.backward().map(|_| ())?))?;
        if std::env::var_os("BENCH_KERNELS_ONLY").is_some() {
            // For `perf record`: many steps of the kernels path alone.
            for _ in 0..100 {
                let grads = fast_forward()?.backward()?;
                fused_adam.step(&grads)?;
            }
            continue;
        }
        let total_k = batch + forward_k + backward_k + step_fused;
        println!(
            "step-with-kernels bs={bs} forward_ms={forward_k:.2} backward_ms={backward_k:.2} => {:.0} images/s",
            bs as f64 / total_k * 1e3
        );
        println!(
            "step bs={bs} batch_ms={batch:.2} forward_ms={forward:.2} backward_ms={backward:.2} \
             adam_candle_ms={step_candle:.2} adam_fused_ms={step_fused:.2} => {:.0} images/s",
            bs as f64 / total * 1e3
        );
        // Per layer: forward + backward of conv(+relu) and pool, stock vs kernels.
        for (name, c_in, c_out, side) in [
            ("conv1", 1, 32, 28),
            ("conv2", 32, 64, 14),
            ("conv3", 64, 128, 7),
        ] {
            let x = Var::randn(0f32, 1.0, (bs, c_in, side, side), &device)?;
            let w = Var::randn(0f32, 0.1, (c_out, c_in, 3, 3), &device)?;
            let b = Var::randn(0f32, 0.1, c_out, &device)?;
            let stock_conv = candle_nn::Conv2d::new(
                w.as_tensor().clone(),
                Some(b.as_tensor().clone()),
                candle_nn::Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                },
            );
            let pad = |t: Tensor| -> candle_core::Result<Tensor> {
                if side % 2 == 1 {
                    t.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)
                } else {
                    Ok(t)
                }
            };
            let stock_fwd = time_ms(5, || {
                Ok(pad(stock_conv.forward(&x)?.relu()?)?
                    .max_pool2d(2)
                    .map(|_| ())?)
            })?;
            let stock_all = time_ms(5, || {
                pad(stock_conv.forward(&x)?.relu()?)?
                    .max_pool2d(2)?
                    .sum_all()?
                    .backward()?;
                Ok(())
            })?;
            let fast_fwd = time_ms(5, || {
                Ok(
                    kernels::max_pool2x2_same(&kernels::conv3x3_same(&x, &w, &b, true)?)
                        .map(|_| ())?,
                )
            })?;
            let fast_all = time_ms(5, || {
                kernels::max_pool2x2_same(&kernels::conv3x3_same(&x, &w, &b, true)?)?
                    .sum_all()?
                    .backward()?;
                Ok(())
            })?;
            // The fused op as the model uses it: conv1's input (the images) needs no gradient.
            let x_in = if c_in == 1 {
                x.as_tensor().detach()
            } else {
                x.as_tensor().clone()
            };
            let fused_fwd = time_ms(5, || {
                Ok(kernels::conv3x3_relu_pool(&x_in, &w, &b).map(|_| ())?)
            })?;
            let fused_all = time_ms(5, || {
                kernels::conv3x3_relu_pool(&x_in, &w, &b)?
                    .sum_all()?
                    .backward()?;
                Ok(())
            })?;
            println!("layer {name} fused bs={bs} fwd_ms={fused_fwd:.2} fwd_bwd_ms={fused_all:.2}");
            println!(
                "layer {name}+relu+pool bs={bs} stock_fwd_ms={stock_fwd:.2} stock_fwd_bwd_ms={stock_all:.2} \
                 kernels_fwd_ms={fast_fwd:.2} kernels_fwd_bwd_ms={fast_all:.2}"
            );
        }
    }
    Ok(())
}
