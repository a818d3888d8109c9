//! The paper's CNN for MNIST, built with candle: three 3x3 convolutions (32, 64, 128
//! filters, same padding, ReLU), each followed by a 2x2 max-pool, then Dense 256 + ReLU,
//! Dropout 0.5 (training only) and Dense 10 (logits; softmax is folded into the loss).
//! 619,786 parameters.
//!
//! Parameters are never initialised by candle (its initialisers use an unseeded thread
//! generator): the initial model is the built-in spec's
//! [`crate::spec::ModelSpec::initial_model`] (Glorot-uniform weights from the seeded
//! [`crate::rng::Rng`], zero biases), loaded with [`crate::weights::ModelFile::to_varmap`].
//!
//! Training and evaluation run the same network on [`crate::network`] (no autograd
//! graph, buffers allocated once); this candle version is its reference in the tests
//! and the way to get the model as candle tensors.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};

use crate::kernels;
use crate::rng::Rng;

/// Identifies this architecture in model files; bump it if any name, shape or the
/// meaning of a tensor changes.
pub const ARCHITECTURE_ID: &str = "fl-mnist-cnn-v1";

/// Every parameter with its shape, in a fixed order (the order of model files). Shapes
/// are candle's: convolution weights `(out, in, kh, kw)`, dense weights `(out, in)`.
/// The flatten before `fc1` is channel-major (NCHW), unlike Keras' NHWC.
pub const PARAMS: &[(&str, &[usize])] = &[
    ("conv1.weight", &[32, 1, 3, 3]),
    ("conv1.bias", &[32]),
    ("conv2.weight", &[64, 32, 3, 3]),
    ("conv2.bias", &[64]),
    ("conv3.weight", &[128, 64, 3, 3]),
    ("conv3.bias", &[128]),
    ("fc1.weight", &[256, 2048]),
    ("fc1.bias", &[256]),
    ("fc2.weight", &[10, 256]),
    ("fc2.bias", &[10]),
];

/// Width of the dense hidden layer, where dropout applies.
pub const HIDDEN: usize = 256;
/// Dropout rate of the paper's model.
pub const DROPOUT: f32 = 0.5;

/// The network. Build it over a `VarMap` that already holds every parameter (from
/// [`crate::weights::ModelFile::to_varmap`]): `VarBuilder` then only looks the names up.
// The reference the tests (and the bench's profile mode) check `crate::network` against;
// training and evaluation never build it, so it stays out of the documented API.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Model {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Model {
    /// Builds the layers over `vs`; parameter names come from `vs.pp("conv1")` etc.
    pub fn new(vs: VarBuilder) -> Result<Model> {
        let same = Conv2dConfig { padding: 1, ..Default::default() };
        Ok(Model {
            conv1: candle_nn::conv2d(1, 32, 3, same, vs.pp("conv1"))?,
            conv2: candle_nn::conv2d(32, 64, 3, same, vs.pp("conv2"))?,
            conv3: candle_nn::conv2d(64, 128, 3, same, vs.pp("conv3"))?,
            fc1: candle_nn::linear(2048, HIDDEN, vs.pp("fc1"))?,
            fc2: candle_nn::linear(HIDDEN, 10, vs.pp("fc2"))?,
        })
    }

    /// Builds the model over the parameters already in `varmap`.
    pub fn from_varmap(varmap: &VarMap, device: &Device) -> Result<Model> {
        Model::new(VarBuilder::from_varmap(varmap, DType::F32, device))
    }

    /// Logits `(n, 10)` for images `(n, 1, 28, 28)`. `dropout_mask` (training only) is
    /// a `(n, 256)` tensor of 0 and 1/(1-rate) from [`Model::dropout_mask`].
    ///
    /// Runs on [`crate::kernels`] as candle custom ops (fused conv+bias+ReLU+"same"
    /// max-pool, dense layers), so candle's autograd gives the gradients that
    /// [`crate::network`] is checked against. `forward_stock` in the tests is the same
    /// network in candle's stock ops (values only: see `crate::network` on why not
    /// gradients).
    pub fn forward(&self, xs: &Tensor, dropout_mask: Option<&Tensor>) -> Result<Tensor> {
        let conv = |xs: &Tensor, layer: &Conv2d| -> Result<Tensor> {
            let bias = layer.bias().ok_or_else(|| candle_core::Error::Msg("convolution without bias".into()))?;
            kernels::conv3x3_relu_pool(xs, layer.weight(), bias)
        };
        let dense = |xs: &Tensor, layer: &Linear, relu: bool| -> Result<Tensor> {
            let bias = layer.bias().ok_or_else(|| candle_core::Error::Msg("dense layer without bias".into()))?;
            kernels::linear(xs, layer.weight(), bias, relu)
        };
        let xs = conv(xs, &self.conv1)?; // 28 -> 14
        let xs = conv(&xs, &self.conv2)?; // 14 -> 7
        let xs = conv(&xs, &self.conv3)?; // 7 -> 4 (Keras' padding="same" pool)
        let xs = xs.flatten_from(1)?; // 128 * 4 * 4 = 2048
        let mut xs = dense(&xs, &self.fc1, true)?;
        if let Some(mask) = dropout_mask {
            xs = xs.mul(mask)?;
        }
        dense(&xs, &self.fc2, false)
    }

    /// The same network in candle's stock operations: the reference for [`Model::forward`].
    #[cfg(test)]
    pub(crate) fn forward_stock(&self, xs: &Tensor, dropout_mask: Option<&Tensor>) -> Result<Tensor> {
        use candle_core::{Module, D};
        let xs = self.conv1.forward(xs)?.relu()?.max_pool2d(2)?; // 28 -> 14
        let xs = self.conv2.forward(&xs)?.relu()?.max_pool2d(2)?; // 14 -> 7
                                                                  // Keras' `padding="same"` pool takes 7 to 4 by padding right and bottom. After the
                                                                  // ReLU every value is >= 0, so a zero pad gives the same maxima.
        let xs = self.conv3.forward(&xs)?.relu()?;
        let xs = xs.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?.max_pool2d(2)?; // 7 -> 4
        let xs = xs.flatten_from(1)?; // 128 * 4 * 4 = 2048
        let mut xs = self.fc1.forward(&xs)?.relu()?;
        if let Some(mask) = dropout_mask {
            xs = xs.mul(mask)?;
        }
        self.fc2.forward(&xs)
    }

    /// An inverted-dropout mask `(n, 256)` drawn from `rng`: each unit kept with
    /// probability 1 - [`DROPOUT`] and scaled by 1/(1 - rate), as Keras does.
    pub fn dropout_mask(n: usize, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        let mut values = vec![0f32; n * HIDDEN];
        fill_dropout_mask(rng, DROPOUT, &mut values);
        Tensor::from_vec(values, (n, HIDDEN), device)
    }
}

/// Fills `mask` with an inverted-dropout mask drawn from `rng`, one draw per value:
/// 0 with probability `rate`, 1/(1 - rate) otherwise (Keras' scaling).
pub fn fill_dropout_mask(rng: &mut Rng, rate: f32, mask: &mut [f32]) {
    let scale = 1.0 / (1.0 - rate);
    for m in mask {
        *m = if rng.next_f32() < rate { 0.0 } else { scale };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::ModelFile;

    #[test]
    fn has_the_papers_parameter_count() {
        // 619,786 is the count Keras prints for the paper's model (its Table 1 layers:
        // 320 + 18,496 + 73,856 + 524,544 + 2,570); the built-in spec's count is checked in
        // spec.rs.
        let varmap = ModelFile::initial(1).to_varmap(&Device::Cpu).unwrap();
        let total: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(total, 619_786);
    }

    #[test]
    fn forward_shapes_and_seeded_init() {
        let device = Device::Cpu;
        let varmap = ModelFile::initial(1).to_varmap(&device).unwrap();
        let model = Model::from_varmap(&varmap, &device).unwrap();
        // The model must not have added parameters of its own (a name typo would).
        assert_eq!(varmap.all_vars().len(), PARAMS.len());
        let xs = Tensor::zeros((3, 1, 28, 28), DType::F32, &device).unwrap();
        let mask = Model::dropout_mask(3, &mut Rng::new(2), &device).unwrap();
        assert_eq!(model.forward(&xs, Some(&mask)).unwrap().dims(), &[3, 10]);
        let a = ModelFile::initial(1).to_varmap(&device).unwrap().data().lock().unwrap()["fc1.weight"].to_vec2::<f32>().unwrap();
        let b = varmap.data().lock().unwrap()["fc1.weight"].to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
        let limit = (6.0f32 / (2048.0 + 256.0)).sqrt();
        assert!(a.iter().flatten().all(|w| w.abs() <= limit));
    }

    /// The kernels give the stock candle network's logits (tolerance 1e-4: f32 sums in
    /// a different order) on real-looking inputs, with and without dropout.
    #[test]
    fn kernels_match_stock_candle_ops() {
        let device = Device::Cpu;
        let varmap = ModelFile::initial(3).to_varmap(&device).unwrap();
        let model = Model::from_varmap(&varmap, &device).unwrap();
        let xs = Tensor::rand(0f32, 1.0, (5, 1, 28, 28), &device).unwrap();
        let mask = Model::dropout_mask(5, &mut Rng::new(4), &device).unwrap();
        for mask in [None, Some(&mask)] {
            let ours = model.forward(&xs, mask).unwrap();
            let stock = model.forward_stock(&xs, mask).unwrap();
            let diff = (ours - stock).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        }
    }
}
