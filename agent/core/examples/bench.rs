//! Training and evaluation speed of the agent's CNN, and the peak memory of a training
//! run: `make bench` (agent/core/bench/bench.sh) and the agent half of `make bench-vs-keras`.
//!
//! Modes (one per process, so that each peak-RSS figure is its own):
//! - `speed`: images/s of `fl_core::train::train` at each batch size (after a warm-up
//!   run), and of `fl_core::train::evaluate` on the test set;
//! - `rss`: one epoch on a 30,000-image IID shard, then the peak RSS of the training
//!   (VmHWM, reset after the data is loaded) and of the whole process;
//! - `profile`: where a training step's time goes (batch, forward, backward, optimizer)
//!   and per-layer timings of candle's stock conv/pool against `fl_core::kernels`.
//!
//! Results go to stdout as `key=value` lines that `agent/core/bench/vs-keras.sh` parses.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Module, Tensor, Var};
use candle_nn::Optimizer;
use fl_core::data::{partition, Dataset, Mnist, Split};
use fl_core::kernels;
use fl_core::model::Model;
use fl_core::network::Trainer;
use fl_core::rng::Rng;
use fl_core::spec::ModelSpec;
use fl_core::train::{evaluate, train, TrainConfig};
use fl_core::weights::ModelFile;

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
                    .map(|s| s.trim().parse::<usize>().with_context(|| format!("--batch-sizes: {s:?} is not a number")))
                    .collect::<Result<_>>()?
            }
            Long("train-images") => args.train_images = parser.value()?.parse()?,
            Long("eval-images") => args.eval_images = parser.value()?.parse()?,
            Long("help") => {
                println!("usage: bench [speed|rss|profile] [--data DIR] [--batch-sizes 32,128] [--train-images N] [--eval-images N]");
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
    eprintln!("bench: rayon threads {} (set RAYON_NUM_THREADS to change)", rayon::current_num_threads());
    match args.mode.as_str() {
        "speed" => speed(&args),
        "rss" => rss(&args),
        "profile" => profile(&args),
        other => bail!("unknown mode {other:?}: expected speed, rss or profile"),
    }
}

fn load(args: &Args) -> Result<Mnist> {
    Mnist::load(&args.data).with_context(|| format!("loading MNIST from {} (run `make setup`)", args.data.display()))
}

/// A copy of the first `n` examples of `set` (all of them if there are fewer).
fn first(set: &Dataset, n: usize) -> Dataset {
    set.select(&(0..n.min(set.len())).collect::<Vec<_>>())
}

fn quiet(batch_size: usize) -> TrainConfig {
    TrainConfig { epochs: 1, batch_size, progress: None, ..TrainConfig::default() }
}

/// Training images/s per batch size, then evaluation images/s.
fn speed(args: &Args) -> Result<()> {
    let mnist = load(args)?;
    let start = ModelFile::initial(1);
    for &bs in &args.batch_sizes {
        // Warm-up: thread pool, allocator, caches; at least 10 steps.
        let warm = first(&mnist.train, 10 * bs);
        train(&ModelSpec::paper_cnn(), &start, &warm, None, &quiet(bs), &mut |_| {})?;
        let set = first(&mnist.train, args.train_images.max(bs));
        let t0 = Instant::now();
        train(&ModelSpec::paper_cnn(), &start, &set, None, &quiet(bs), &mut |_| {})?;
        let rate = set.len() as f64 / t0.elapsed().as_secs_f64();
        println!("train bs={bs} images_per_s={rate:.0}");
    }
    let test = first(&mnist.test, args.eval_images);
    evaluate(&ModelSpec::paper_cnn(), &start, &first(&mnist.test, 1000))?;
    let t0 = Instant::now();
    let evaluation = evaluate(&ModelSpec::paper_cnn(), &start, &test)?;
    let rate = test.len() as f64 / t0.elapsed().as_secs_f64();
    println!("eval bs={} images_per_s={rate:.0} (accuracy {:.4} of an untrained model)", fl_core::train::EVAL_BATCH, evaluation.accuracy);
    Ok(())
}

/// Peak resident memory (kB) since start or the last reset, from /proc/self/status.
fn peak_rss_kb() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/self/status")?;
    line.split_whitespace().nth(1).context("malformed VmHWM line")?.parse().context("malformed VmHWM value")
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
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS via /proc/self/clear_refs")?;
    let bs = args.batch_sizes[0];
    let t0 = Instant::now();
    let trained = train(&ModelSpec::paper_cnn(), &ModelFile::initial(1), &shard, Some(&test), &quiet(bs), &mut |_| {})?;
    let seconds = t0.elapsed().as_secs_f64();
    let peak = peak_rss_kb()?;
    let accuracy = trained.epochs.last().and_then(|e| e.test).map(|t| t.accuracy).unwrap_or(f64::NAN);
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

/// Where the time of a training step goes: the network's own step against the same
/// kernels driven by candle's autograd, and per layer stock candle against the kernels.
fn profile(args: &Args) -> Result<()> {
    let mnist = load(args)?;
    let device = Device::Cpu;
    let start = ModelFile::initial(1);
    let params = candle_nn::ParamsAdamW { eps: 1e-7, weight_decay: 0.0, ..Default::default() };
    for &bs in &args.batch_sizes {
        let indices: Vec<usize> = (0..bs).collect();
        let mut rng = Rng::new(1);
        // The network's step (what `train` runs): batch, forward, backward and Adam.
        let mut trainer = Trainer::with_adam(&ModelSpec::paper_cnn(), &start, params.clone())?;
        let step = time_ms(20, || {
            trainer.step(&mnist.train, &indices, &mut rng);
            Ok(())
        })?;
        println!("step network bs={bs} step_ms={step:.2} => {:.0} images/s", bs as f64 / step * 1e3);
        // The same kernels as candle ops, with candle's autograd and the fused Adam.
        let varmap = start.to_varmap(&device)?;
        let model = Model::from_varmap(&varmap, &device)?;
        let mut adam = kernels::Adam::new(varmap.all_vars(), params.clone())?;
        let (xs, ys) = mnist.train.batch(&indices, &device)?;
        let mask = Model::dropout_mask(bs, &mut rng, &device)?;
        let loss = || candle_nn::loss::cross_entropy(&model.forward(&xs, Some(&mask))?, &ys);
        let forward = time_ms(10, || Ok(loss().map(|_| ())?))?;
        let backward = time_ms(10, || Ok(loss()?.backward().map(|_| ())?))? - forward;
        let grads = loss()?.backward()?;
        let adam_ms = time_ms(10, || Ok(adam.step(&grads)?))?;
        let total = forward + backward + adam_ms;
        println!(
            "step candle-autograd bs={bs} forward_ms={forward:.2} backward_ms={backward:.2} adam_ms={adam_ms:.2} => {:.0} images/s",
            bs as f64 / total * 1e3
        );
        // Per layer: conv + relu + pool, forward and backward.
        for (name, c_in, c_out, side) in [("conv1", 1, 32, 28), ("conv2", 32, 64, 14), ("conv3", 64, 128, 7)] {
            let x = Var::randn(0f32, 1.0, (bs, c_in, side, side), &device)?;
            let w = Var::randn(0f32, 0.1, (c_out, c_in, 3, 3), &device)?;
            let b = Var::randn(0f32, 0.1, c_out, &device)?;
            let stock_conv = candle_nn::Conv2d::new(
                w.as_tensor().clone(),
                Some(b.as_tensor().clone()),
                candle_nn::Conv2dConfig { padding: 1, ..Default::default() },
            );
            let stock = || -> candle_core::Result<Tensor> {
                let t = stock_conv.forward(&x)?.relu()?;
                let t = if side % 2 == 1 { t.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)? } else { t };
                t.max_pool2d(2)
            };
            let stock_fwd = time_ms(5, || Ok(stock().map(|_| ())?))?;
            let stock_all = time_ms(5, || Ok(stock()?.sum_all()?.backward().map(|_| ())?))?;
            // The kernels on NHWC slices, as the network calls them (the first layer's
            // input needs no gradient).
            let d = kernels::ConvDims { n: bs, c_in, c_out, h: side, w: side, pool: true };
            let xs = x.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let ws = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let bias = b.as_tensor().to_vec1::<f32>()?;
            let mut ys = vec![0f32; bs * d.pooled_per_image()];
            let mut argmax = vec![0u8; ys.len()];
            let fwd = time_ms(20, || {
                kernels::conv_relu_pool_forward(d, &xs, &ws, &bias, &mut ys, &mut argmax);
                Ok(())
            })?;
            let (mut gx, mut gw, mut gb) = (vec![0f32; xs.len()], vec![0f32; ws.len()], vec![0f32; c_out]);
            let bwd = time_ms(20, || {
                let gx = (c_in > 1).then_some(&mut gx[..]);
                kernels::conv_relu_pool_backward(d, &xs, &ws, &argmax, &ys, gx, &mut gw, &mut gb);
                Ok(())
            })?;
            println!(
                "layer {name}+relu+pool bs={bs} stock_fwd_ms={stock_fwd:.2} stock_fwd_bwd_ms={stock_all:.2} \
                 kernels_fwd_ms={fwd:.2} kernels_fwd_bwd_ms={:.2}",
                fwd + bwd
            );
        }
    }
    Ok(())
}
