//! The `fl-agent` subcommands `summary`, `train` and `eval`: flags parsed with lexopt
//! into a config, then run. `main.rs` only dispatches to these.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use fl_core::data::Mnist;
use fl_core::flags::{number, positive};
use fl_core::train::{self, TrainConfig};
use fl_core::weights::{hex, ModelFile};
use lexopt::prelude::*;

const SUMMARY_USAGE: &str = "usage: fl-agent summary\n\nprints the model's layers, output shapes and parameter counts\n";

/// `fl-agent summary`.
pub fn summary(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    if let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{SUMMARY_USAGE}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    print!("{}", fl_core::model::summary());
    Ok(())
}

const TRAIN_USAGE: &str = "\
usage: fl-agent train --data DIR [--epochs N] [--batch-size N] [--train-limit N]
                      [--test-limit N] [--seed N] [--out FILE]

trains the model from a seeded initialisation and prints one line per epoch on stdout

  --data DIR         folder with the four MNIST IDX files (raw or .gz)
  --epochs N         passes over the training set (default 1; the paper's baseline is 25)
  --batch-size N     examples per step (default 32)
  --train-limit N    use only the first N training images
  --test-limit N     evaluate on only the first N test images
  --seed N           seeds initialisation, shuffling and dropout (default 1)
  --out FILE         where to write the model (default model.bin)
";

/// Validated flags of `fl-agent train`.
#[derive(Debug, Clone)]
pub struct TrainArgs {
    /// MNIST folder.
    pub data: PathBuf,
    /// Training settings.
    pub config: TrainConfig,
    /// Use only the first N training images.
    pub train_limit: Option<usize>,
    /// Evaluate on only the first N test images.
    pub test_limit: Option<usize>,
    /// Output model file.
    pub out: PathBuf,
}

impl TrainArgs {
    /// Parses the flags; `Ok(None)` means `--help` was printed.
    pub fn parse(args: Vec<OsString>) -> Result<Option<TrainArgs>> {
        let mut parser = lexopt::Parser::from_args(args);
        let mut data = None;
        let mut config = TrainConfig::default();
        let (mut train_limit, mut test_limit) = (None, None);
        let mut out = PathBuf::from("model.bin");
        while let Some(arg) = parser.next()? {
            match arg {
                Long("data") => data = Some(PathBuf::from(parser.value()?)),
                Long("epochs") => config.epochs = positive(number(&mut parser, "--epochs")?, "--epochs")?,
                Long("batch-size") => config.batch_size = positive(number(&mut parser, "--batch-size")?, "--batch-size")?,
                Long("train-limit") => train_limit = Some(positive(number(&mut parser, "--train-limit")?, "--train-limit")?),
                Long("test-limit") => test_limit = Some(positive(number(&mut parser, "--test-limit")?, "--test-limit")?),
                Long("seed") => config.seed = number(&mut parser, "--seed")?,
                Long("out") => out = PathBuf::from(parser.value()?),
                Short('h') | Long("help") => {
                    print!("{TRAIN_USAGE}");
                    return Ok(None);
                }
                _ => return Err(arg.unexpected().into()),
            }
        }
        let data = data.context("--data DIR is required (the MNIST folder, e.g. data/mnist)")?;
        Ok(Some(TrainArgs { data, config, train_limit, test_limit, out }))
    }
}

/// `fl-agent train`.
pub fn train(args: Vec<OsString>) -> Result<()> {
    let Some(args) = TrainArgs::parse(args)? else { return Ok(()) };
    run_train(&args)
}

/// Runs `fl-agent train` with parsed flags.
pub fn run_train(args: &TrainArgs) -> Result<()> {
    let mnist = Mnist::load(&args.data)?;
    let train_set = mnist.train.take(args.train_limit.unwrap_or(usize::MAX));
    let test_set = mnist.test.take(args.test_limit.unwrap_or(usize::MAX));
    eprintln!(
        "training on {} images, testing on {}, {} epoch(s), batch {}, seed {}",
        train_set.len(),
        test_set.len(),
        args.config.epochs,
        args.config.batch_size,
        args.config.seed
    );
    let start = ModelFile::initial(args.config.seed)?;
    let trained = train::train(&start, &train_set, Some(&test_set), &args.config, &mut |report| {
        if let Some(test) = report.test {
            println!(
                "epoch {:>3}  loss {:.4}  test loss {:.4}  test accuracy {:.2}%",
                report.epoch,
                report.train_loss,
                test.loss,
                100.0 * test.accuracy
            );
        }
    })?;
    trained.model.save(&args.out)?;
    eprintln!("wrote {} (sha256 {})", args.out.display(), hex(&trained.model.sha256()));
    Ok(())
}

const EVAL_USAGE: &str = "\
usage: fl-agent eval --model FILE --data DIR [--test-limit N]

prints the model's accuracy on the MNIST test set

  --model FILE       model file written by `fl-agent train` or the aggregator
  --data DIR         folder with the four MNIST IDX files (raw or .gz)
  --test-limit N     evaluate on only the first N test images
";

/// `fl-agent eval`.
pub fn eval(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let (mut model, mut data, mut test_limit) = (None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("model") => model = Some(PathBuf::from(parser.value()?)),
            Long("data") => data = Some(PathBuf::from(parser.value()?)),
            Long("test-limit") => test_limit = Some(positive(number(&mut parser, "--test-limit")?, "--test-limit")?),
            Short('h') | Long("help") => {
                print!("{EVAL_USAGE}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let model_path: PathBuf = model.context("--model FILE is required")?;
    let data: PathBuf = data.context("--data DIR is required (the MNIST folder, e.g. data/mnist)")?;
    let model = ModelFile::load(&model_path)?;
    let mnist = Mnist::load(&data)?;
    let test_set = mnist.test.take(test_limit.unwrap_or(usize::MAX));
    let evaluation = train::evaluate(&model, &test_set)?;
    eprintln!("evaluated {} on {} test images, loss {:.4}", model_path.display(), evaluation.n, evaluation.loss);
    println!("accuracy: {:.2}%", 100.0 * evaluation.accuracy);
    Ok(())
}

const EXPORT_USAGE: &str = "\
usage: fl-agent export --model FILE --format safetensors|onnx --out PATH

writes a model file (a global model, or one written by `fl-agent train`) for other tools:
safetensors (the tensors under their names, PyTorch's layouts) or ONNX (opset 13, the
whole network: input `images` (n, 1, 28, 28) f32 pixels / 255, output `probabilities`
(n, 10)); agent/README.md documents both layouts

  --model FILE       the model file
  --format F         safetensors or onnx
  --out PATH         where to write it (replaced atomically)
";

/// `fl-agent export`.
pub fn export(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let (mut model, mut format, mut out) = (None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("model") => model = Some(PathBuf::from(parser.value()?)),
            Long("format") => format = Some(parser.value()?.string()?),
            Long("out") => out = Some(PathBuf::from(parser.value()?)),
            Short('h') | Long("help") => {
                print!("{EXPORT_USAGE}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let model_path: PathBuf = model.context("--model FILE is required")?;
    let format = format.context("--format is required: safetensors or onnx")?;
    let out: PathBuf = out.context("--out PATH is required")?;
    if !matches!(format.as_str(), "safetensors" | "onnx") {
        anyhow::bail!("--format {format:?}: expected safetensors or onnx");
    }
    let model = ModelFile::load(&model_path)?;
    match format.as_str() {
        "onnx" => fl_core::export::write(&out, &fl_core::export::onnx(&model)?)?,
        _ => fl_core::export::safetensors(&model, &out)?,
    }
    eprintln!("wrote {} as {format} to {}", model_path.display(), out.display());
    Ok(())
}
