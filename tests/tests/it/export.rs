//! `fl-agent export`: a trained model written as safetensors and ONNX, then used from
//! Python as another tool would: onnxruntime runs the ONNX file, numpy runs the network on
//! the safetensors weights from the documented layout (`tests/export/check.py`). On 1,000
//! test images both must predict the class this project predicts for every image, softmax
//! within 1e-4. Python and the pinned packages (tests/export/requirements.txt) are in the
//! venv `tests/export/venv.sh` makes (`make test` runs it), `tests/export/.venv`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use fl_core::data::Mnist;
use fl_core::network::Network;
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
    let probabilities = Network::from_model(&model)?.predict(&test_set, 100)?;
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
