//! Federated averaging (McMahan et al., 2017): the mean of the learners' weights,
//! weighted by their numbers of training samples. Streaming: models are added one at a
//! time into a running f64 sum, so memory does not grow with the number of models, and
//! the result depends only on the inputs and the order they are added in.

use crate::weights::{check_layout, ModelFile, NamedTensor};
use anyhow::{bail, ensure, Result};

/// A running sample-weighted sum of models.
#[derive(Debug, Default)]
pub struct FedAvg {
    /// Metadata and tensor names/shapes of the first model; every later one must match.
    template: Option<ModelFile>,
    /// Per tensor, the sum over models of `n_samples * value`, in f64.
    sums: Vec<Vec<f64>>,
    total_samples: u64,
    max_round: u64,
    n_models: usize,
}

impl FedAvg {
    /// An empty accumulator.
    pub fn new() -> FedAvg {
        FedAvg::default()
    }

    /// Number of models added so far.
    pub fn len(&self) -> usize {
        self.n_models
    }

    /// True if no model was added.
    pub fn is_empty(&self) -> bool {
        self.n_models == 0
    }

    /// Adds a model, weighted by its `n_samples`. `label` names the input in errors (a
    /// file name, a learner id). Errors if its architecture, tensor names or shapes
    /// differ from the first model's, or if it has no samples.
    pub fn add(&mut self, model: &ModelFile, label: &str) -> Result<()> {
        ensure!(model.n_samples > 0, "fedavg: {label} has n_samples 0, so it cannot be weighted");
        check_layout(model, self.template.as_ref(), "fedavg", label, "the first model")?;
        if self.template.is_none() {
            self.sums = model.tensors.iter().map(|t| vec![0.0; t.data.len() / 4]).collect();
            self.template = Some(ModelFile { tensors: Vec::new(), ..model.clone() });
            self.template_tensors(model);
        }
        let weight = model.n_samples as f64;
        for (sum, tensor) in self.sums.iter_mut().zip(&model.tensors) {
            for (s, b) in sum.iter_mut().zip(tensor.data.chunks_exact(4)) {
                *s += weight * f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64;
            }
        }
        self.total_samples =
            self.total_samples.checked_add(model.n_samples).ok_or_else(|| anyhow::anyhow!("fedavg: total sample count overflows"))?;
        self.max_round = self.max_round.max(model.round);
        self.n_models += 1;
        Ok(())
    }

    /// Keeps names, shapes and dtypes of the first model (without its data).
    fn template_tensors(&mut self, model: &ModelFile) {
        if let Some(template) = self.template.as_mut() {
            template.tensors = model.tensors.iter().map(|t| NamedTensor { data: Vec::new(), ..t.clone() }).collect();
        }
    }

    /// The weighted mean, rounded to f32. Its `round` is the largest input round (set it
    /// explicitly if the caller knows better) and `n_samples` the total.
    pub fn finish(self) -> Result<ModelFile> {
        let Some(template) = self.template else { bail!("fedavg: no models to average") };
        let total = self.total_samples as f64;
        let tensors = template
            .tensors
            .iter()
            .zip(&self.sums)
            .map(|(t, sum)| {
                let values: Vec<f32> = sum.iter().map(|s| (s / total) as f32).collect();
                NamedTensor::from_f32(&t.name, &t.dims(), &values)
            })
            .collect();
        Ok(ModelFile { round: self.max_round, n_samples: self.total_samples, tensors, ..template })
    }
}

/// FedAvg of a list of models in order (convenience over [`FedAvg`]).
pub fn average<'a>(models: impl IntoIterator<Item = (&'a ModelFile, String)>) -> Result<ModelFile> {
    let mut fedavg = FedAvg::new();
    for (model, label) in models {
        fedavg.add(model, &label)?;
    }
    fedavg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Dtype;

    /// A two-tensor model (not the CNN: FedAvg itself does not care about the layout).
    fn tiny(n_samples: u64, round: u64, a: &[f32], b: &[f32]) -> ModelFile {
        ModelFile {
            format_version: 1,
            architecture: "test".into(),
            spec: None,
            round,
            n_samples,
            tensors: vec![NamedTensor::from_f32("a", &[2, 2], a), NamedTensor::from_f32("b", &[1], b)],
        }
    }

    #[test]
    fn weighted_mean_matches_hand_computed_values() {
        // By hand: weights 1, 3 (total 4).
        // a: (1*1 + 3*5)/4 = 4, (1*2 + 3*6)/4 = 5, (1*-4 + 3*0)/4 = -1, (1*0.5 + 3*0.5)/4 = 0.5
        // b: (1*10 + 3*-2)/4 = 1
        let m1 = tiny(1, 2, &[1.0, 2.0, -4.0, 0.5], &[10.0]);
        let m2 = tiny(3, 3, &[5.0, 6.0, 0.0, 0.5], &[-2.0]);
        let avg = average([(&m1, "m1".into()), (&m2, "m2".into())]).unwrap();
        assert_eq!(avg.tensors[0].to_f32(), vec![4.0, 5.0, -1.0, 0.5]);
        assert_eq!(avg.tensors[1].to_f32(), vec![1.0]);
        assert_eq!(avg.tensors[0].dtype, Dtype::F32);
        assert_eq!((avg.n_samples, avg.round, avg.architecture.as_str()), (4, 3, "test"));
        // Three unequal counts: weights 2, 5, 3 (total 10); b = (2*1 + 5*2 + 3*4)/10 = 2.4.
        let m3 = tiny(2, 1, &[0.0; 4], &[1.0]);
        let m4 = tiny(5, 1, &[0.0; 4], &[2.0]);
        let m5 = tiny(3, 1, &[0.0; 4], &[4.0]);
        let avg = average([(&m3, "x".into()), (&m4, "y".into()), (&m5, "z".into())]).unwrap();
        assert_eq!(avg.tensors[1].to_f32(), vec![2.4f32]);
    }

    #[test]
    fn equal_models_average_to_themselves_and_are_deterministic() {
        let m = tiny(7, 0, &[0.1, 0.2, 0.3, 0.4], &[1e-8]);
        let once = average([(&m, "a".into()), (&m, "b".into()), (&m, "c".into())]).unwrap();
        assert_eq!(once.tensors, m.tensors);
        let again = average([(&m, "a".into()), (&m, "b".into()), (&m, "c".into())]).unwrap();
        assert_eq!(once.to_bytes(), again.to_bytes());
    }

    #[test]
    fn rejects_mismatched_inputs_naming_them() {
        let good = tiny(1, 0, &[0.0; 4], &[0.0]);
        let mut fedavg = FedAvg::new();
        fedavg.add(&good, "first.bin").unwrap();
        let mut other_arch = good.clone();
        other_arch.architecture = "other".into();
        let err = fedavg.add(&other_arch, "b.bin").unwrap_err().to_string();
        assert!(err.contains("b.bin is architecture \"other\""), "{err}");
        let mut other_shape = good.clone();
        other_shape.tensors[0] = NamedTensor::from_f32("a", &[4], &[0.0; 4]);
        let err = fedavg.add(&other_shape, "c.bin").unwrap_err().to_string();
        assert!(err.contains("c.bin has tensor \"a\" with shape [4]"), "{err}");
        let mut other_name = good.clone();
        other_name.tensors[1].name = "c".into();
        let err = fedavg.add(&other_name, "d.bin").unwrap_err().to_string();
        assert!(err.contains("d.bin has tensor \"c\""), "{err}");
        let mut fewer = good.clone();
        fewer.tensors.pop();
        let err = fedavg.add(&fewer, "e.bin").unwrap_err().to_string();
        assert!(err.contains("e.bin has 1 tensors, the first model has 2"), "{err}");
        let mut empty = good.clone();
        empty.n_samples = 0;
        let err = fedavg.add(&empty, "f.bin").unwrap_err().to_string();
        assert!(err.contains("f.bin has n_samples 0"), "{err}");
        assert!(FedAvg::new().finish().is_err());
        // Rejected inputs changed nothing.
        assert_eq!(fedavg.len(), 1);
        assert_eq!(fedavg.finish().unwrap().tensors, good.tensors);
    }
}
