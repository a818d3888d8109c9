//! The `fl-agent` subcommands `summary`, `train` and `eval`: flags parsed with lexopt
//! into a config, then run. `main.rs` only dispatches to these.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use fl_core::data::load_source;
use fl_core::ensemble::FederationModel;
use fl_core::flags::{number, positive, DataFlags, DATA_HELP};
use fl_core::spec::ModelSpec;
use fl_core::train::{self, TrainConfig};
use fl_core::weights::{hex, ModelFile};
use lexopt::prelude::*;

const SUMMARY_USAGE: &str = "usage: fl-agent summary [--spec FILE]\n\nprints the model's layers, output shapes and parameter counts\n\n  --spec FILE        a model spec (model.toml; default: the built-in paper CNN)\n";

/// `fl-agent summary`.
pub fn summary(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut spec = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("spec") => spec = Some(PathBuf::from(parser.value()?)),
            Short('h') | Long("help") => {
                print!("{SUMMARY_USAGE}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    print!("{}", load_spec(spec.as_deref())?.summary());
    Ok(())
}

/// The spec of `--spec FILE`, or the built-in paper CNN.
fn load_spec(path: Option<&std::path::Path>) -> Result<ModelSpec> {
    path.map_or_else(|| Ok(ModelSpec::paper_cnn()), ModelSpec::load)
}

/// The model a model file follows: the built-in spec, the one `--spec FILE` gives, or the
/// model groups several `--spec FILE` give (in group order) for an ensemble; its digest
/// must be the one the model names.
fn model_of(model: &ModelFile, paths: &[PathBuf], model_path: &std::path::Path) -> Result<FederationModel> {
    let declared = FederationModel::load(paths, "--spec")?;
    if model.spec != declared.digest() {
        match (model.spec, paths.is_empty()) {
            (Some(digest), true) => bail!(
                "{} follows model spec {}: give that spec with --spec FILE (an ensemble: each group's, in order)",
                model_path.display(),
                hex(&digest)
            ),
            _ => bail!(
                "{} follows {}, not {declared} (from --spec)",
                model_path.display(),
                fl_core::spec::describe(&model.architecture, model.spec)
            ),
        }
    }
    declared.check_model(model)?;
    Ok(declared)
}

const TRAIN_USAGE: &str = "\
usage: fl-agent train --data PATH [--spec FILE] [--epochs N] [--batch-size N]
                      [--train-limit N] [--test-limit N] [--seed N] [--out FILE]

trains the model from a seeded initialisation and prints one line per epoch on stdout

  --spec FILE        the model spec (model.toml; default: the built-in paper CNN)
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
    /// The model spec's file (`None`: the built-in paper CNN).
    pub spec: Option<PathBuf>,
    /// Where the data is and how to read it.
    pub data: DataFlags,
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
        let (mut data, mut spec) = (DataFlags::default(), None);
        let mut config = TrainConfig::default();
        let (mut train_limit, mut test_limit) = (None, None);
        let mut out = PathBuf::from("model.bin");
        while let Some(arg) = parser.next()? {
            match arg {
                Long(flag) if DataFlags::handles(flag) => {
                    let flag = flag.to_string();
                    data.set(&flag, &mut parser)?;
                }
                Long("spec") => spec = Some(PathBuf::from(parser.value()?)),
                Long("epochs") => config.epochs = positive(number(&mut parser, "--epochs")?, "--epochs")?,
                Long("batch-size") => config.batch_size = positive(number(&mut parser, "--batch-size")?, "--batch-size")?,
                Long("train-limit") => train_limit = Some(positive(number(&mut parser, "--train-limit")?, "--train-limit")?),
                Long("test-limit") => test_limit = Some(positive(number(&mut parser, "--test-limit")?, "--test-limit")?),
                Long("seed") => config.seed = number(&mut parser, "--seed")?,
                Long("out") => out = PathBuf::from(parser.value()?),
                Short('h') | Long("help") => {
                    print!("{TRAIN_USAGE}{DATA_HELP}");
                    return Ok(None);
                }
                _ => return Err(arg.unexpected().into()),
            }
        }
        Ok(Some(TrainArgs { spec, data, config, train_limit, test_limit, out }))
    }
}

/// `fl-agent train`.
pub fn train(args: Vec<OsString>) -> Result<()> {
    let Some(args) = TrainArgs::parse(args)? else { return Ok(()) };
    run_train(&args)
}

/// Runs `fl-agent train` with parsed flags.
pub fn run_train(args: &TrainArgs) -> Result<()> {
    let spec = load_spec(args.spec.as_deref())?;
    let source = args.data.source(spec.input, args.config.seed, "--data PATH is required (e.g. the MNIST folder data/mnist)")?;
    let (train_set, test_set) = load_source(&source)?;
    let train_set = train_set.take(args.train_limit.unwrap_or(usize::MAX));
    let test_set = test_set.take(args.test_limit.unwrap_or(usize::MAX));
    train_set.check_fits(spec.input, spec.classes, &source.to_string())?;
    eprintln!(
        "training {spec} on {} examples, testing on {}, {} epoch(s), batch {}, seed {}",
        train_set.len(),
        test_set.len(),
        args.config.epochs,
        args.config.batch_size,
        args.config.seed
    );
    let start = spec.initial_model(args.config.seed);
    let trained = train::train(&spec, &start, &train_set, Some(&test_set), &args.config, &mut |report| {
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
usage: fl-agent eval --model FILE --data PATH [--spec FILE]... [--test-limit N]

prints the model's accuracy on the test set of the data

  --model FILE       model file written by `fl-agent train` or the aggregator
  --spec FILE        the model spec the file follows (default: the built-in paper CNN);
                     an ensemble's global model: each group's spec, in group order
  --test-limit N     evaluate on only the first N test examples
";

/// `fl-agent eval`.
pub fn eval(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let (mut model, mut specs, mut test_limit) = (None, Vec::new(), None);
    let mut data = DataFlags::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("model") => model = Some(PathBuf::from(parser.value()?)),
            Long("spec") => specs.push(PathBuf::from(parser.value()?)),
            Long(flag) if DataFlags::handles(flag) => {
                let flag = flag.to_string();
                data.set(&flag, &mut parser)?;
            }
            Long("test-limit") => test_limit = Some(positive(number(&mut parser, "--test-limit")?, "--test-limit")?),
            Short('h') | Long("help") => {
                print!("{EVAL_USAGE}{DATA_HELP}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let model_path: PathBuf = model.context("--model FILE is required")?;
    let model = ModelFile::load(&model_path)?;
    let declared = model_of(&model, &specs, &model_path)?;
    let source = data.source(declared.input(), 1, "--data PATH is required (e.g. the MNIST folder data/mnist)")?;
    let (_, test_set) = load_source(&source)?;
    let test_set = test_set.take(test_limit.unwrap_or(usize::MAX));
    let evaluation = declared.evaluate(&model, &test_set)?;
    eprintln!("evaluated {} on {} test examples, loss {:.4}", model_path.display(), evaluation.n, evaluation.loss);
    println!("accuracy: {:.2}%", 100.0 * evaluation.accuracy);
    Ok(())
}

const EXPORT_USAGE: &str = "\
usage: fl-agent export --model FILE [--spec FILE]... [--group N] --format safetensors|onnx --out PATH

writes a model file (a global model, or one written by `fl-agent train`) for other tools:
safetensors (the tensors under their names, PyTorch's layouts) or ONNX (opset 13, the
whole network: input `images` (n, C, H, W) f32 pixels / 255, or `features` (n, F), output
`probabilities` (n, classes)); agent/README.md documents both layouts

  --model FILE       the model file
  --spec FILE        the model spec the file follows (default: the built-in paper CNN);
                     an ensemble's global model: each group's spec, in group order
  --group N          an ensemble: export model group N's model
  --format F         safetensors or onnx
  --out PATH         where to write it (replaced atomically)
";

/// `fl-agent export`.
pub fn export(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let (mut model, mut specs, mut format, mut out, mut group) = (None, Vec::new(), None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("model") => model = Some(PathBuf::from(parser.value()?)),
            Long("spec") => specs.push(PathBuf::from(parser.value()?)),
            Long("group") => group = Some(positive(number(&mut parser, "--group")?, "--group")?),
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
    let declared = model_of(&model, &specs, &model_path)?;
    // An ensemble is exported one group model at a time.
    let g = match (declared.groups(), group) {
        (1, None | Some(1)) => 0,
        (1, Some(_)) => bail!("--group: {} is not an ensemble", model_path.display()),
        (n, None) => bail!("{} is an ensemble of {n} model groups: choose one with --group N", model_path.display()),
        (_, Some(g)) => g - 1,
    };
    let (spec, model) = (declared.group_spec(g)?, declared.member(&model, g)?);
    match format.as_str() {
        "onnx" => fl_core::export::write(&out, &fl_core::export::onnx(spec, &model)?)?,
        _ => fl_core::export::safetensors(spec, &model, &out)?,
    }
    eprintln!("wrote {} as {format} to {}", model_path.display(), out.display());
    Ok(())
}
