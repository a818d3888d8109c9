//! A federation that declares its own model and brings its own data: a dense network on a
//! CSV data set (MNIST pooled to 14x14 and written as sensor loggers write CSV), deployed
//! with its model spec, trained by two `fl-agent run` processes and aggregated by
//! `fl-aggregator run` on real nodes; every global model names the spec and verifies, and a
//! board whose data does not fit the spec is refused before it sends anything. Then two
//! model groups (the paper's CNN and a small dense network) whose global model is their
//! ensemble, on real nodes too, each round verified. And boards whose data is class
//! folders of PNG images, as a camera writes them.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fl_contracts::Registry;
use fl_core::data::{load_csv, CsvOptions, Dataset, Mnist};
use fl_core::ensemble::{Ensemble, FederationModel};
use fl_core::spec::ModelSpec;
use fl_core::train::evaluate;
use fl_core::weights::ModelFile;
use fl_tests::devnet::Running;
use fl_tests::util::workspace_root;

use super::federation::{Federation, RUN_LIMIT};

/// Training examples in the CSV file (the two boards shard it, each holding out a fifth).
const TRAIN_EXAMPLES: usize = 8_000;
/// Examples of the aggregator's evaluation CSV (MNIST's test images).
const EVAL_EXAMPLES: usize = 1_000;
/// What two rounds of one epoch must reach on the evaluation set (measured 0.864 here).
const ACCURACY: f64 = 0.84;

const SPEC: &str = "\
name = \"mnist-14x14-dense\"
features = 196
classes = 10

[[layer]]
dense = 64

[adam]
learning_rate = 0.002
";

/// Writes the first `n` examples of `set` (28x28 MNIST) to a CSV file as 196 features (the
/// mean of each 2x2 block, 0 to 1) and a label column, with a header row; `drop` features
/// fewer (a board whose sensor logs one column less).
fn write_csv(set: &Dataset, n: usize, path: &Path, drop: usize) -> Result<()> {
    let features = 196 - drop;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let header: Vec<String> = (1..=features).map(|i| format!("p{i}")).chain(["label".to_string()]).collect();
    writeln!(out, "{}", header.join(","))?;
    let (images, labels) = (set.images(), set.labels());
    for i in 0..n {
        let image = &images[i * 784..][..784];
        let mut row = Vec::with_capacity(features + 1);
        for block in 0..features {
            let (y, x) = (2 * (block / 14), 2 * (block % 14));
            let sum: u32 = [(y, x), (y, x + 1), (y + 1, x), (y + 1, x + 1)].iter().map(|&(r, c)| image[r * 28 + c] as u32).sum();
            row.push(format!("{:.4}", sum as f64 / (4.0 * 255.0)));
        }
        row.push(labels[i].to_string());
        writeln!(out, "{}", row.join(","))?;
    }
    out.flush()?;
    Ok(())
}

/// The aggregator (with `aggregator_flags`) and two learners (`learner_keys` in their
/// `agent.toml`) through the federation's rounds; the learners, finished.
fn run_rounds(federation: &Federation, aggregator_flags: &[&str], learner_keys: &str) -> Result<Vec<Running>> {
    let mut aggregator = federation.aggregator_with("aggregator.log", aggregator_flags)?;
    let mut learners = Vec::new();
    for node_id in 1..=2 {
        learners.push(federation.learner_with(node_id, &format!("learner-{node_id}.log"), learner_keys)?);
    }
    aggregator.wait_success(RUN_LIMIT)?;
    for learner in &mut learners {
        learner.wait_success(Duration::from_secs(120))?;
    }
    Ok(learners)
}

#[test]
fn a_dense_model_on_csv_data_learns_verifies_and_refuses_data_that_does_not_fit() -> Result<()> {
    let mnist = Mnist::load(&workspace_root().join("data/mnist"))?;
    let spec = ModelSpec::parse(SPEC)?;
    let staging = fl_tests::util::TempDir::new("models-data")?;
    let (train_csv, eval_csv, bad_csv) =
        (staging.path().join("train.csv"), staging.path().join("eval.csv"), staging.path().join("bad.csv"));
    write_csv(&mnist.train, TRAIN_EXAMPLES, &train_csv, 0)?;
    write_csv(&mnist.test, EVAL_EXAMPLES, &eval_csv, 0)?;
    write_csv(&mnist.train, 50, &bad_csv, 1)?;
    drop(mnist);

    let model = FederationModel::Single(spec.clone());
    let federation = Federation::start_declared("models", 2, &model, train_csv.clone(), TRAIN_EXAMPLES / 2)?;
    let csv_keys = "data_format = \"csv\"\ntest_fraction = 0.2\n";

    // A board whose CSV has 195 feature columns is refused with the reason, and sends nothing.
    let mut command = federation.learner_command(1, csv_keys)?;
    command.arg("--data").arg(&bad_csv);
    let mut refused = Running::spawn("learner 1 (bad data)", command, &federation.dir().join("refused.log"), false)?;
    ensure!(refused.wait_success(Duration::from_secs(120)).is_err(), "a learner with 195 features was not refused");
    let log = refused.lines().join("\n");
    for needle in [
        "learner 1: this board's data does not fit the federation's model \"mnist-14x14-dense\"",
        "195 features",
        "196 features",
        &bad_csv.display().to_string(),
    ] {
        ensure!(log.contains(needle), "the refusal does not say {needle:?}:\n{log}");
    }
    let client = federation.devnet.read_client()?;
    let registry = Registry::at(&client, federation.devnet.registry);
    ensure!(registry.model_spec()? == Some(spec.digest()), "the registry does not record the spec's digest");
    ensure!(registry.local_update(1)?.latest.is_none(), "the refused learner recorded an update");

    // The federation itself: two boards, two rounds, the aggregator evaluating on its CSV.
    let eval_arg = eval_csv.display().to_string();
    let learners = run_rounds(&federation, &["--data", &eval_arg, "--data-format", "csv"], csv_keys)?;
    ensure!(
        learners[0].lines().iter().any(|l| l.contains("the federation trains \"mnist-14x14-dense\"")),
        "learner 1 did not say which model it trains"
    );

    // Every global model names the spec by digest, the last one learned, and each verifies.
    let (globals, _) = federation.events()?;
    let eval = load_csv(&eval_csv, &CsvOptions::default())?;
    let mut accuracies = Vec::new();
    for global in &globals {
        let model = ModelFile::from_bytes(&federation.fetch(&global.cid, &global.digest)?)?;
        ensure!(model.spec == Some(spec.digest()), "the round-{} global model does not name the spec", global.round);
        accuracies.push(evaluate(&spec, &model, &eval)?.accuracy);
        let mut verify = federation.verify_command(global.round)?;
        verify.wait_success(Duration::from_secs(120)).with_context(|| format!("verify --round {}", global.round))?;
    }
    eprintln!("global accuracy on {EVAL_EXAMPLES} evaluation examples by round: {accuracies:?}");
    ensure!(accuracies.len() == 3, "expected global models of rounds 0 to 2, found {}", accuracies.len());
    ensure!(accuracies[2] >= ACCURACY, "the dense model reached {:.4}, below {ACCURACY}", accuracies[2]);
    Ok(())
}

/// A small dense network for weaker boards, on MNIST's images.
const SMALL_DENSE: &str = "name = \"mnist-dense-32\"\ninput = [28, 28, 1]\nclasses = 10\n\n[[layer]]\ndense = 32\n";

/// `fl-aggregator` with `args` then `paths`, on the federation's chain and IPFS node with
/// the owner's development key: its stdout, or an error with its stderr.
fn operator(federation: &Federation, args: &[&str], paths: &[&std::ffi::OsStr]) -> Result<String> {
    let output = std::process::Command::new(fl_tests::util::workspace_bin("fl-aggregator")?)
        .args(args)
        .args(paths)
        .args(["--rpc-url", federation.devnet.anvil.url(), "--ipfs-api", &federation.devnet.ipfs[0].api_url])
        .env("ETH_PRIVATE_KEY", federation.devnet.anvil.key(0))
        .env_remove("FL_REGISTRY")
        .output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    ensure!(output.status.success(), "fl-aggregator {args:?}: {stderr}");
    Ok(stdout.into_owned())
}

/// The paper's future work: two model groups, the paper's CNN (learner 1) and a small dense
/// network for a weaker board (learner 2), whose global model is their ensemble.
#[test]
fn two_model_groups_train_an_ensemble_whose_rounds_verify() -> Result<()> {
    let dense = ModelSpec::parse(SMALL_DENSE)?;
    let model = FederationModel::Groups(Ensemble::new(vec![ModelSpec::paper_cnn(), dense.clone()])?);
    let federation = Federation::start_declared("groups", 2, &model, workspace_root().join("data/mnist"), 1_000)?;
    let client = federation.devnet.read_client()?;
    let registry = Registry::at(&client, federation.devnet.registry);
    ensure!(registry.model_groups()? == 2 && registry.learner_group(2)? == 1, "the registry does not hold the groups");

    // The operator's commands declare the same groups on a registry of their own.
    let (cnn_toml, dense_toml) = (federation.dir().join("cnn.toml"), federation.dir().join("dense.toml"));
    std::fs::write(&cnn_toml, ModelSpec::paper_cnn().canonical())?;
    std::fs::write(&dense_toml, SMALL_DENSE)?;
    let deployed = operator(
        &federation,
        &["deploy", "--max-samples", "1000", "--model"],
        &[cnn_toml.as_os_str(), "--model".as_ref(), dense_toml.as_os_str()],
    )?;
    let address = deployed.trim().to_string();
    let other = Registry::at(&client, address.parse()?);
    ensure!(other.model_spec()? == model.digest() && other.model_groups()? == 2, "deploy --model twice did not declare the groups");
    let learner = format!("{:?}", federation.devnet.anvil.address(1));
    operator(&federation, &["learners", "add", "1", &learner, "--group", "2", "--registry", &address], &[])?;
    let status = operator(&federation, &["status", "--registry", &address], &[])?;
    ensure!(status.contains(&format!("model groups 2 {}", fl_core::weights::hex(&model.digest().unwrap_or_default()))), "{status}");
    ensure!(status.contains("learner 1 group 2\n"), "{status}");
    let err = operator(&federation, &["learners", "add", "2", &learner, "--group", "3", "--registry", &address], &[]).unwrap_err();
    ensure!(format!("{err:#}").contains("--group 3: the federation has model groups 1 to 2"), "{err:#}");

    // The boards start before the operator has set learner 2's group (it may, until that
    // learner's first update): each must train the group the registry says when it trains.
    let owner = fl_contracts::Client::new(
        fl_contracts::Rpc::new(federation.devnet.anvil.url())?,
        federation.devnet.anvil.signer(0)?,
        Some(federation.devnet.anvil.chain_id()),
    )?;
    let owned = Registry::at(&owner, federation.devnet.registry);
    owned.set_learner_group(2, 0)?;
    let mut learners = Vec::new();
    for node_id in 1..=2 {
        learners.push(federation.learner_with(node_id, &format!("learner-{node_id}.log"), "")?);
    }
    learners[1].wait_for("waiting for the initial global model", Duration::from_secs(120))?;
    owned.set_learner_group(2, 1)?;
    let mut aggregator = federation.aggregator_with("aggregator.log", &[])?;
    aggregator.wait_success(RUN_LIMIT)?;
    for learner in &mut learners {
        learner.wait_success(Duration::from_secs(120))?;
    }
    ensure!(
        learners[1].lines().iter().any(|l| l.contains("this learner trains group 2: \"mnist-dense-32\"")),
        "learner 2 did not say which group it trains"
    );

    let (globals, locals) = federation.events()?;
    let test = Mnist::load_test(&workspace_root().join("data/mnist"))?.take(500);
    let mut table = Vec::new();
    for global in &globals {
        let ensemble = ModelFile::from_bytes(&federation.fetch(&global.cid, &global.digest)?)?;
        model.check_model(&ensemble).with_context(|| format!("the round-{} global model", global.round))?;
        let alone: Vec<f64> = (0..2).map(|g| model.evaluate_group(&ensemble, g, &test).map(|e| e.accuracy)).collect::<Result<_>>()?;
        table.push((global.round, alone, model.evaluate(&ensemble, &test)?.accuracy));
        if global.round > 0 {
            let record = fl_core::record::RoundRecord::from_bytes(&global.record)?;
            ensure!(record.groups == vec![vec![1], vec![2]], "round {}: the record's groups are {:?}", global.round, record.groups);
        }
        let mut verify = federation.verify_command(global.round)?;
        verify.wait_success(Duration::from_secs(120)).with_context(|| format!("verify --round {}", global.round))?;
    }
    // Each learner's update leaves the other group's tensors as the global model had them.
    for update in locals.iter().filter(|u| u.round == 2) {
        let base = ModelFile::from_bytes(&federation.fetch(&globals[1].cid, &globals[1].digest)?)?;
        let sent = fl_core::encoding::decode(&federation.fetch(&update.cid, &update.digest)?, Some(&base))?.model;
        let other = 2 - update.node_id as usize;
        ensure!(
            model.member(&sent, other)?.tensors == model.member(&base, other)?.tensors,
            "learner {}'s update changed the other group's model",
            update.node_id
        );
    }
    // The ensemble leaves the federation one group model at a time, and evaluates whole.
    let global_path = federation.dir().join("global-2.bin");
    std::fs::write(&global_path, federation.fetch(&globals[2].cid, &globals[2].digest)?)?;
    let agent = fl_tests::util::workspace_bin("fl-agent")?;
    let specs = ["--spec", cnn_toml.to_str().unwrap_or_default(), "--spec", dense_toml.to_str().unwrap_or_default()];
    let onnx = federation.dir().join("dense.onnx");
    let export = |extra: &[&str]| {
        std::process::Command::new(&agent)
            .args(["export", "--format", "onnx", "--model"])
            .arg(&global_path)
            .args(specs)
            .args(extra)
            .arg("--out")
            .arg(&onnx)
            .output()
    };
    let refused = export(&[])?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("is an ensemble of 2 model groups: choose one with --group N"),
        "{refused:?}"
    );
    ensure!(export(&["--group", "2"])?.status.success() && onnx.is_file(), "fl-agent export --group 2 failed");
    let eval = std::process::Command::new(&agent)
        .args(["eval", "--data", workspace_root().join("data/mnist").to_str().unwrap_or_default(), "--test-limit", "500", "--model"])
        .arg(&global_path)
        .args(specs)
        .output()?;
    let expected = format!("accuracy: {:.2}%", 100.0 * table[2].2);
    ensure!(String::from_utf8_lossy(&eval.stdout).contains(&expected), "fl-agent eval of the ensemble: {eval:?}, expected {expected}");

    eprintln!("round  CNN alone  dense alone  ensemble (500 test images)");
    for (round, alone, both) in &table {
        eprintln!("{round:>5}  {:>8.2}%  {:>10.2}%  {:>7.2}%", 100.0 * alone[0], 100.0 * alone[1], 100.0 * both);
    }
    ensure!(table.len() == 3, "expected global models of rounds 0 to 2");
    let (_, alone, both) = &table[2];
    ensure!(alone[0] > 0.5 && alone[1] > 0.5 && *both > 0.5, "round 2 did not learn: {:?}", table[2]);
    Ok(())
}

/// PNG images per class in the image-folder test (the two boards share the folder, each
/// holding out a fifth of its shard).
const IMAGES_PER_CLASS: usize = 100;

/// Writes the first `per_class` MNIST training images of each digit to `root/<digit>/`, as
/// 28x28 grey PNG files.
fn write_class_folders(set: &Dataset, per_class: usize, root: &Path) -> Result<()> {
    let (images, labels) = (set.images(), set.labels());
    let mut written = [0usize; 10];
    for (i, &label) in labels.iter().enumerate() {
        let class = label as usize;
        if written[class] == per_class {
            continue;
        }
        let folder = root.join(class.to_string());
        std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        let pixels = images[i * 784..][..784].to_vec();
        let image = image::GrayImage::from_raw(28, 28, pixels).context("a 28x28 image")?;
        let path = folder.join(format!("{i:05}.png"));
        image.save(&path).with_context(|| format!("writing {}", path.display()))?;
        written[class] += 1;
    }
    ensure!(written.iter().all(|&n| n == per_class), "MNIST's training set has fewer than {per_class} images of some digit: {written:?}");
    Ok(())
}

#[test]
fn boards_train_the_papers_cnn_from_class_folders_of_png_images() -> Result<()> {
    let mnist = workspace_root().join("data/mnist");
    let staging = fl_tests::util::TempDir::new("models-images")?;
    let camera = staging.path().join("camera");
    write_class_folders(&Mnist::load(&mnist)?.train, IMAGES_PER_CLASS, &camera)?;
    let model = FederationModel::Single(ModelSpec::paper_cnn());
    let federation = Federation::start_declared("images", 2, &model, camera.clone(), 5 * IMAGES_PER_CLASS)?;
    // The boards read the folders; the aggregator evaluates on MNIST's own test set.
    let mnist_arg = mnist.display().to_string();
    let learners = run_rounds(&federation, &["--data", &mnist_arg], "data_format = \"images\"\ntest_fraction = 0.2\n")?;
    for learner in &learners {
        let lines = learner.lines();
        ensure!(
            lines.iter().any(|l| l.contains(&camera.display().to_string())),
            "a learner does not name the folder it read:\n{}",
            lines.join("\n")
        );
    }
    let (globals, _) = federation.events()?;
    ensure!(globals.len() == 3, "expected global models of rounds 0 to 2, found {}", globals.len());
    let last = ModelFile::from_bytes(&federation.fetch(&globals[2].cid, &globals[2].digest)?)?;
    let accuracy = evaluate(&ModelSpec::paper_cnn(), &last, &Mnist::load_test(&mnist)?.take(500))?.accuracy;
    eprintln!("global accuracy on 500 MNIST test images after two rounds on {} PNG files: {accuracy:.4}", 10 * IMAGES_PER_CLASS);
    // Labels read wrong (a folder mapped to the wrong class, images transposed) leave it
    // near chance (10%).
    ensure!(accuracy >= 0.5, "the global model reached {accuracy:.4} from the images");
    let mut verify = federation.verify_command(2)?;
    verify.wait_success(Duration::from_secs(120)).context("verify --round 2")?;
    Ok(())
}
