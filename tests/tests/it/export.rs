//! `fl-agent export`: a trained model written as safetensors and ONNX, then used from
//! Python as another tool would: onnxruntime runs the ONNX file, numpy runs the network on
//! the safetensors weights from the documented layout (`tests/export/check.py`). On 1,000
//! test images both must predict the class this project predicts for every image, softmax
//! within 1e-4. Python and the pinned packages (tests/export/requirements.txt) are in the
//! venv `tests/export/venv.sh` makes (`make test` runs it), `tests/export/.venv`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use fl_core::data::{Dataset, InputShape, Mnist};
use fl_core::network::Network;
use fl_core::rng::Rng;
use fl_core::spec::ModelSpec;
use fl_core::train::{train, TrainConfig};
use fl_core::weights::ModelFile;
use fl_tests::util::{workspace_bin, workspace_root, TempDir};

const IMAGES: usize = 1_000;

fn run(command: &mut Command, what: &str) -> Result<String> {
    let output = command.output().with_context(|| format!("starting {what}"))?;
    super::cross::check_success(what, &output)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The venv's python that tests/export/venv.sh made with tests/export/requirements.txt.
fn python() -> Result<PathBuf> {
    let venv = workspace_root().join("tests/export/.venv");
    if !venv.join(".fl-installed").exists() {
        bail!("no Python venv with the export test's packages in {}: run `bash tests/export/venv.sh` (`make test` does)", venv.display());
    }
    Ok(venv.join("bin/python"))
}

fn write_f32(path: &Path, values: impl Iterator<Item = f32>) -> Result<()> {
    let bytes: Vec<u8> = values.flat_map(f32::to_le_bytes).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[test]
fn exported_safetensors_and_onnx_predict_as_this_project_does_from_python() -> Result<()> {
    let dir = TempDir::new("export")?;
    let agent = workspace_bin("fl-agent")?;
    let data = workspace_root().join("data/mnist");
    let model_path = dir.path().join("model.bin");
    // A model that has learned something, so that the classes mean something.
    run(
        Command::new(&agent)
            .args(["train", "--epochs", "1", "--train-limit", "3000", "--test-limit", "100", "--out"])
            .arg(&model_path)
            .arg("--data")
            .arg(&data),
        "fl-agent train",
    )?;
    let (onnx, safetensors) = (dir.path().join("model.onnx"), dir.path().join("model.safetensors"));
    for (format, out) in [("onnx", &onnx), ("safetensors", &safetensors)] {
        run(
            Command::new(&agent).args(["export", "--format", format, "--model"]).arg(&model_path).arg("--out").arg(out),
            "fl-agent export",
        )?;
    }
    // A format it does not write is a clear error.
    let err =
        run(Command::new(&agent).args(["export", "--format", "tflite", "--model"]).arg(&model_path).arg("--out").arg(&onnx), "export")
            .unwrap_err()
            .to_string();
    assert!(err.contains("--format \"tflite\": expected safetensors or onnx"), "{err}");

    let model = ModelFile::load(&model_path)?;
    let test_set = Mnist::load_test(&data)?.take(IMAGES);
    let probabilities = Network::new(&fl_core::spec::ModelSpec::paper_cnn(), &model)?.predict(&test_set, 100)?;
    let (images, expected) = (dir.path().join("images.f32"), dir.path().join("probabilities.f32"));
    write_f32(&images, test_set.images().iter().map(|&p| p as f32 / 255.0))?;
    write_f32(&expected, probabilities.into_iter())?;
    let checked = run(
        Command::new(python()?).arg(workspace_root().join("tests/export/check.py")).args([&onnx, &safetensors, &images, &expected]),
        "tests/export/check.py",
    )?;
    eprint!("{checked}");
    for format in ["onnx", "safetensors"] {
        assert!(checked.contains(&format!("export check: {format}: same class on {IMAGES} of {IMAGES} images")), "{checked}");
    }
    Ok(())
}

/// Declared models leave the federation the same way: a convolution without a pool on a
/// three-channel image (its flatten is channel-major), and a dense network with dropout on
/// a feature vector, each trained a little on random data, exported with `--spec` and
/// checked from Python on 300 inputs.
#[test]
fn exported_declared_models_predict_as_this_project_does_from_python() -> Result<()> {
    let cases = [
        (
            "name = \"camera\"\ninput = [9, 7, 3]\nclasses = 4\n[[layer]]\nconv = 4\n[[layer]]\nconv = 5\npool = true\n[[layer]]\ndense = 6\n",
            "conv1,conv2:pool,fc1,fc2",
            "3,9,7",
        ),
        ("name = \"sensors\"\nfeatures = 12\nclasses = 3\n[[layer]]\ndense = 8\n[[layer]]\ndropout = 0.2\n", "fc1,fc2", "12"),
    ];
    let dir = TempDir::new("export-declared")?;
    let agent = workspace_bin("fl-agent")?;
    for (i, (text, layers, input)) in cases.iter().enumerate() {
        let spec = ModelSpec::parse(text)?;
        let spec_path = dir.path().join(format!("spec-{i}.toml"));
        std::fs::write(&spec_path, text)?;
        let n = 300;
        let mut rng = Rng::new(i as u64 + 1);
        let values: Vec<f32> = (0..n * spec.input.values()).map(|_| rng.next_f32()).collect();
        let labels: Vec<u8> = (0..n).map(|j| (j % spec.classes) as u8).collect();
        let set = Dataset::from_f32(spec.input, values.clone(), labels)?;
        let config = TrainConfig { epochs: 2, batch_size: 16, seed: 3, progress: None };
        let model = train(&spec, &spec.initial_model(5), &set, None, &config, &mut |_| {})?.model;
        let model_path = dir.path().join(format!("model-{i}.bin"));
        model.save(&model_path)?;
        let (onnx, safetensors) = (dir.path().join(format!("model-{i}.onnx")), dir.path().join(format!("model-{i}.safetensors")));
        for (format, out) in [("onnx", &onnx), ("safetensors", &safetensors)] {
            let mut command = Command::new(&agent);
            command.args(["export", "--format", format, "--model"]).arg(&model_path).arg("--spec").arg(&spec_path).arg("--out").arg(out);
            run(&mut command, "fl-agent export --spec")?;
        }
        let probabilities = Network::new(&spec, &model)?.predict(&set, 64)?;
        // The project keeps images channels-last (HWC); ONNX takes NCHW.
        let inputs: Vec<f32> = match spec.input {
            InputShape::Image { height, width, channels } => values
                .chunks_exact(height * width * channels)
                .flat_map(|image| (0..channels).flat_map(move |c| (0..height * width).map(move |p| image[p * channels + c])))
                .collect(),
            InputShape::Features(_) => values,
        };
        let (inputs_path, expected) = (dir.path().join(format!("inputs-{i}.f32")), dir.path().join(format!("probabilities-{i}.f32")));
        write_f32(&inputs_path, inputs.into_iter())?;
        write_f32(&expected, probabilities.into_iter())?;
        let checked = run(
            Command::new(python()?)
                .arg(workspace_root().join("tests/export/check.py"))
                .args([&onnx, &safetensors, &inputs_path, &expected])
                .args([layers, input]),
            "tests/export/check.py",
        )?;
        eprint!("{}: {checked}", spec.name);
        let noun = if input.contains(',') { "images" } else { "features" };
        for format in ["onnx", "safetensors"] {
            assert!(checked.contains(&format!("export check: {format}: same class on {n} of {n} {noun}")), "{checked}");
        }
    }
    Ok(())
}
