//! The paper's CNN run straight on the kernels, over buffers allocated once: what
//! [`crate::train`] trains and evaluates with.
//!
//! [`crate::model::Model`] builds the same network from candle tensors and custom ops,
//! and candle's autograd then derives the backward pass. Per batch-32 step that graph
//! cost about 4 ms of a 14 ms step on two cores (building and sorting the graph, a fresh
//! zeroed tensor for every gradient and activation, a dozen small tensor ops for the
//! cross-entropy), a third of the work. Here the forward pass writes into buffers that
//! live as long as the network, the backward pass is written out layer by layer with
//! the same kernels ([`crate::kernels`]), and Adam updates all 619,786 parameters in one
//! sweep over one flat vector. Tests check the loss and every gradient against candle's
//! autograd through [`crate::model::Model::forward`], and evaluation against candle's
//! stock-op model.
//!
//! Parameters are kept as one `Vec<f32>` in [`PARAMS`] order (the model file's order),
//! each tensor in candle's layout (OIHW, (out, in)); activations are channels-last
//! (NHWC), and the last pool's output is turned channel-major before `fc1`, whose
//! weights expect candle's flatten order.

use anyhow::{ensure, Result};
use candle_nn::ParamsAdamW;

use crate::data::{Dataset, IMAGE_BYTES};
use crate::kernels::{self, AdamStep, ConvDims};
use crate::model::{fill_dropout_mask, HIDDEN, PARAMS};
use crate::rng::Rng;
use crate::weights::{ModelFile, NamedTensor};

/// Accuracy and mean cross-entropy on a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Fraction correct, in [0, 1].
    pub accuracy: f64,
    /// Mean cross-entropy per example.
    pub loss: f64,
    /// Number of examples evaluated.
    pub n: usize,
}

/// The three convolution layers: input channels, output channels, input side.
const CONVS: [(usize, usize, usize); 3] = [(1, 32, 28), (32, 64, 14), (64, 128, 7)];
/// Values per image after the last pool: 128 x 4 x 4.
const FLAT: usize = 2048;
/// Output classes.
const CLASSES: usize = 10;

/// Values per image after convolution layer `layer`'s pool.
fn pooled_per_image(layer: usize) -> usize {
    conv_dims(layer, 1).pooled_per_image()
}

fn conv_dims(layer: usize, n: usize) -> ConvDims {
    let (c_in, c_out, side) = CONVS[layer];
    ConvDims { n, c_in, c_out, h: side, w: side }
}

/// The ten parameter tensors of a flat vector, in [`PARAMS`] order.
fn split(mut flat: &[f32]) -> [&[f32]; 10] {
    std::array::from_fn(|i| {
        let (head, tail) = flat.split_at(PARAMS[i].1.iter().product());
        flat = tail;
        head
    })
}

/// [`split`] for a mutable vector.
fn split_mut(mut flat: &mut [f32]) -> [&mut [f32]; 10] {
    std::array::from_fn(|i| {
        let (head, tail) = std::mem::take(&mut flat).split_at_mut(PARAMS[i].1.iter().product());
        flat = tail;
        head
    })
}

/// The network's parameters and the buffers of its forward pass.
pub struct Network {
    params: Vec<f32>,
    /// The current batch; `labels.len()` is how many images every buffer holds.
    pixels: Vec<f32>,
    labels: Vec<u32>,
    /// Output of each convolution layer after ReLU and pool (NHWC), and its argmax.
    pooled: [Vec<f32>; 3],
    argmax: [Vec<u8>; 3],
    /// The last pooled output flattened channel-major (NCHW), fc1's input.
    flat: Vec<f32>,
    /// `relu(fc1)`, the dropout mask and `relu(fc1) * mask` (training only).
    hidden: Vec<f32>,
    mask: Vec<f32>,
    dropped: Vec<f32>,
    logits: Vec<f32>,
}

impl Network {
    /// The network with the weights of `model` (checked with [`ModelFile::validate`]).
    pub fn from_model(model: &ModelFile) -> Result<Network> {
        model.validate()?;
        let mut params = Vec::with_capacity(crate::model::param_count());
        for tensor in &model.tensors {
            params.extend(tensor.to_f32());
        }
        Ok(Network {
            params,
            pixels: Vec::new(),
            labels: Vec::new(),
            pooled: Default::default(),
            argmax: Default::default(),
            flat: Vec::new(),
            hidden: Vec::new(),
            mask: Vec::new(),
            dropped: Vec::new(),
            logits: Vec::new(),
        })
    }

    /// The current weights as a model file of `round`, trained on `n_samples` examples.
    pub fn to_model(&self, round: u64, n_samples: u64) -> ModelFile {
        let tensors =
            split(&self.params).iter().zip(PARAMS).map(|(values, (name, shape))| NamedTensor::from_f32(name, shape, values)).collect();
        ModelFile {
            format_version: crate::weights::FORMAT_VERSION,
            architecture: crate::model::ARCHITECTURE_ID.to_string(),
            round,
            n_samples,
            tensors,
        }
    }

    /// Grows the buffers to hold `n` images (they never shrink).
    fn reserve(&mut self, n: usize) {
        if n <= self.labels.len() {
            return;
        }
        self.pixels.resize(n * IMAGE_BYTES, 0.0);
        self.labels.resize(n, 0);
        for layer in 0..3 {
            self.pooled[layer].resize(n * pooled_per_image(layer), 0.0);
            self.argmax[layer].resize(n * pooled_per_image(layer), 0);
        }
        self.flat.resize(n * FLAT, 0.0);
        for buffer in [&mut self.hidden, &mut self.mask, &mut self.dropped] {
            buffer.resize(n * HIDDEN, 0.0);
        }
        self.logits.resize(n * CLASSES, 0.0);
    }

    /// Loads the examples at `indices` of `set` as the current batch.
    fn load(&mut self, set: &Dataset, indices: &[usize]) {
        let n = indices.len();
        self.reserve(n);
        set.fill_batch(indices, &mut self.pixels[..n * IMAGE_BYTES], &mut self.labels[..n]);
    }

    /// The forward pass of the current batch of `n` images into `self.logits`, with the
    /// dropout mask in `self.mask` applied if `dropout`.
    fn forward(&mut self, n: usize, dropout: bool) {
        let [w1, b1, w2, b2, w3, b3, fc1_w, fc1_b, fc2_w, fc2_b] = split(&self.params);
        let [p1, p2, p3] = &mut self.pooled;
        let [a1, a2, a3] = &mut self.argmax;
        let (p1, p2, p3) = (&mut p1[..n * pooled_per_image(0)], &mut p2[..n * pooled_per_image(1)], &mut p3[..n * FLAT]);
        let (a1, a2, a3) = (&mut a1[..p1.len()], &mut a2[..p2.len()], &mut a3[..p3.len()]);
        kernels::conv_relu_pool_forward(conv_dims(0, n), &self.pixels[..n * IMAGE_BYTES], w1, b1, p1, a1);
        kernels::conv_relu_pool_forward(conv_dims(1, n), p1, w2, b2, p2, a2);
        kernels::conv_relu_pool_forward(conv_dims(2, n), p2, w3, b3, p3, a3);
        // The model's flatten is channel-major (candle's NCHW): fc1's weights expect it.
        let flat = &mut self.flat[..n * FLAT];
        kernels::nhwc_to_nchw(p3, CONVS[2].1, FLAT / CONVS[2].1, flat);
        let hidden = &mut self.hidden[..n * HIDDEN];
        kernels::linear_forward(n, FLAT, HIDDEN, flat, fc1_w, fc1_b, true, hidden);
        let fc2_in: &[f32] = if dropout {
            let dropped = &mut self.dropped[..n * HIDDEN];
            for ((d, h), m) in dropped.iter_mut().zip(&*hidden).zip(&self.mask) {
                *d = h * m;
            }
            dropped
        } else {
            hidden
        };
        kernels::linear_forward(n, HIDDEN, CLASSES, fc2_in, fc2_w, fc2_b, false, &mut self.logits[..n * CLASSES]);
    }

    /// Accuracy and mean cross-entropy on `set`, in batches of `batch_size`.
    pub fn evaluate(&mut self, set: &Dataset, batch_size: usize) -> Result<Evaluation> {
        ensure!(!set.is_empty(), "the test set is empty");
        ensure!(batch_size > 0, "evaluation batch size must be at least 1");
        let indices: Vec<usize> = (0..set.len()).collect();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for batch in indices.chunks(batch_size) {
            let n = batch.len();
            self.load(set, batch);
            self.forward(n, false);
            let (loss, right) = softmax_cross_entropy(&self.logits[..n * CLASSES], &self.labels[..n], None);
            loss_sum += loss;
            correct += right;
        }
        let n = set.len();
        Ok(Evaluation { accuracy: correct as f64 / n as f64, loss: loss_sum / n as f64, n })
    }
}

impl Network {
    /// The softmax probabilities of every image of `set` (`set.len()` rows of 10), in
    /// batches of `batch_size`: what the model predicts, as `fl-agent export`'s formats
    /// must reproduce.
    pub fn predict(&mut self, set: &Dataset, batch_size: usize) -> Result<Vec<f32>> {
        ensure!(batch_size > 0, "prediction batch size must be at least 1");
        let indices: Vec<usize> = (0..set.len()).collect();
        let mut out = Vec::with_capacity(set.len() * CLASSES);
        for batch in indices.chunks(batch_size) {
            let n = batch.len();
            self.load(set, batch);
            self.forward(n, false);
            for row in self.logits[..n * CLASSES].chunks_exact(CLASSES) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                out.extend(exps.iter().map(|e| e / sum));
            }
        }
        Ok(out)
    }
}

/// Sum over the rows of `logits` (n x 10) of the cross-entropy of `softmax(row)` against
/// the row's label, and how many rows have the label as their first largest logit. If
/// `grad` is given it receives the gradient of the *mean* loss with respect to the
/// logits: `(softmax - one_hot) / n`.
fn softmax_cross_entropy(logits: &[f32], labels: &[u32], mut grad: Option<&mut [f32]>) -> (f64, usize) {
    let n = labels.len();
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (i, (row, &label)) in logits.chunks_exact(CLASSES).zip(labels).enumerate() {
        let (mut best, mut max) = (0, row[0]);
        for (j, &v) in row.iter().enumerate().skip(1) {
            if v > max {
                (best, max) = (j, v);
            }
        }
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let log_sum = max + sum.ln();
        loss += (log_sum - row[label as usize]) as f64;
        correct += usize::from(best == label as usize);
        if let Some(grad) = grad.as_deref_mut() {
            for (j, (g, v)) in grad[i * CLASSES..][..CLASSES].iter_mut().zip(row).enumerate() {
                let one_hot = if j == label as usize { 1.0 } else { 0.0 };
                *g = ((v - log_sum).exp() - one_hot) / n as f32;
            }
        }
    }
    (loss, correct)
}

/// A [`Network`] with what training adds: gradients, Adam's moments and the buffers
/// of the backward pass.
pub struct Trainer {
    net: Network,
    adam: ParamsAdamW,
    /// Adam steps taken.
    steps: i32,
    grads: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    grad_logits: Vec<f32>,
    grad_hidden: Vec<f32>,
    grad_flat: Vec<f32>,
    /// Gradients at the pooled outputs of the convolution layers.
    grad_pooled: [Vec<f32>; 3],
}

impl Trainer {
    /// A trainer starting from the weights of `model`, with fresh Adam moments.
    pub fn new(model: &ModelFile, adam: ParamsAdamW) -> Result<Trainer> {
        let net = Network::from_model(model)?;
        let n = net.params.len();
        Ok(Trainer {
            net,
            adam,
            steps: 0,
            grads: vec![0.0; n],
            m: vec![0.0; n],
            v: vec![0.0; n],
            grad_logits: Vec::new(),
            grad_hidden: Vec::new(),
            grad_flat: Vec::new(),
            grad_pooled: Default::default(),
        })
    }

    /// The network being trained (to evaluate it or save its weights).
    pub fn network(&mut self) -> &mut Network {
        &mut self.net
    }

    /// One Adam step on the examples at `indices` of `set`, with a dropout mask drawn
    /// from `rng`. Returns the batch's mean cross-entropy (before the step).
    pub fn step(&mut self, set: &Dataset, indices: &[usize], rng: &mut Rng) -> f64 {
        let n = indices.len();
        self.net.load(set, indices);
        fill_dropout_mask(rng, &mut self.net.mask[..n * HIDDEN]);
        self.net.forward(n, true);
        let loss = self.backward(n);
        self.steps += 1;
        AdamStep::new(&self.adam, self.steps).apply(&mut self.net.params, &mut self.m, &mut self.v, &self.grads);
        loss / n as f64
    }

    /// Gradients of the mean loss of the current batch into `self.grads`; returns the
    /// summed loss.
    fn backward(&mut self, n: usize) -> f64 {
        let net = &self.net;
        self.grad_logits.resize(n * CLASSES, 0.0);
        self.grad_hidden.resize(n * HIDDEN, 0.0);
        self.grad_flat.resize(n * FLAT, 0.0);
        for (layer, grad) in self.grad_pooled.iter_mut().enumerate() {
            grad.resize(n * pooled_per_image(layer), 0.0);
        }
        let grad_logits = &mut self.grad_logits[..n * CLASSES];
        let (loss, _) = softmax_cross_entropy(&net.logits[..n * CLASSES], &net.labels[..n], Some(grad_logits));
        let [w1, _, w2, _, w3, _, fc1_w, _, fc2_w, _] = split(&net.params);
        let [gw1, gb1, gw2, gb2, gw3, gb3, g_fc1_w, g_fc1_b, g_fc2_w, g_fc2_b] = split_mut(&mut self.grads);
        let hidden = &net.hidden[..n * HIDDEN];
        kernels::linear_backward_params(n, HIDDEN, CLASSES, grad_logits, &net.dropped[..n * HIDDEN], g_fc2_w, g_fc2_b);
        let grad_hidden = &mut self.grad_hidden[..n * HIDDEN];
        kernels::linear_backward_input(n, HIDDEN, CLASSES, grad_logits, fc2_w, grad_hidden);
        // Through the dropout mask and fc1's ReLU (open where its output is positive).
        for ((g, h), m) in grad_hidden.iter_mut().zip(hidden).zip(&net.mask) {
            *g = if *h > 0.0 { *g * m } else { 0.0 };
        }
        let [g1, g2, g3] = &mut self.grad_pooled;
        let (g1, g2, g3) = (&mut g1[..n * pooled_per_image(0)], &mut g2[..n * pooled_per_image(1)], &mut g3[..n * FLAT]);
        let (p1, p2) = (&net.pooled[0][..g1.len()], &net.pooled[1][..g2.len()]);
        let (a1, a2, a3) = (&net.argmax[0][..g1.len()], &net.argmax[1][..g2.len()], &net.argmax[2][..g3.len()]);
        kernels::linear_backward_params(n, FLAT, HIDDEN, grad_hidden, &net.flat[..n * FLAT], g_fc1_w, g_fc1_b);
        let grad_flat = &mut self.grad_flat[..n * FLAT];
        kernels::linear_backward_input(n, FLAT, HIDDEN, grad_hidden, fc1_w, grad_flat);
        kernels::nchw_to_nhwc(grad_flat, CONVS[2].1, FLAT / CONVS[2].1, g3);
        kernels::conv_relu_pool_backward(conv_dims(2, n), p2, w3, a3, g3, Some(g2), gw3, gb3);
        kernels::conv_relu_pool_backward(conv_dims(1, n), p1, w2, a2, g2, Some(g1), gw2, gb2);
        // The images need no gradient: the costliest pass of the first layer is skipped.
        let pixels = &net.pixels[..n * IMAGE_BYTES];
        kernels::conv_relu_pool_backward(conv_dims(0, n), pixels, w1, a1, g1, None, gw1, gb1);
        loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use candle_core::{Device, Var};

    /// A small dataset of random pixels and labels (the gradient checks need no MNIST).
    fn random_set(n: usize, seed: u64) -> Dataset {
        let mut rng = Rng::new(seed);
        let images = (0..n * IMAGE_BYTES).map(|_| (rng.next_f32() * 255.0) as u8).collect();
        let labels = (0..n).map(|_| (rng.next_f32() * 10.0) as u8 % 10).collect();
        Dataset::from_raw(images, labels).unwrap()
    }

    /// Loss and every parameter gradient agree with candle's autograd through
    /// [`Model::forward`] (the same kernels as candle custom ops, each checked against
    /// candle's stock ops in `crate::kernels`) and candle's cross_entropy, with dropout.
    ///
    /// Not against `forward_stock` end to end: candle 0.9's max_pool2d backward
    /// multiplies the gradient by the window's share of maxima (1/4 for a unique
    /// maximum) where it should divide by their count, so every gradient below a stock
    /// pool comes out 4x too small per pool. (The stock model's *values* are checked in
    /// `crate::model`.)
    #[test]
    fn gradients_match_candle_autograd() {
        let device = Device::Cpu;
        let start = ModelFile::initial(7).unwrap();
        let set = random_set(6, 3);
        let indices: Vec<usize> = (0..6).collect();

        let mut trainer = Trainer::new(&start, ParamsAdamW::default()).unwrap();
        let mut rng = Rng::new(9);
        trainer.net.load(&set, &indices);
        fill_dropout_mask(&mut rng, &mut trainer.net.mask[..6 * HIDDEN]);
        trainer.net.forward(6, true);
        let loss = trainer.backward(6) / 6.0;

        let varmap = start.to_varmap(&device).unwrap();
        let model = Model::from_varmap(&varmap, &device).unwrap();
        let (xs, ys) = set.batch(&indices, &device).unwrap();
        let mask = Model::dropout_mask(6, &mut Rng::new(9), &device).unwrap();
        let logits = model.forward(&xs, Some(&mask)).unwrap();
        let reference = candle_nn::loss::cross_entropy(&logits, &ys).unwrap();
        let ref_loss = reference.to_scalar::<f32>().unwrap() as f64;
        assert!((loss - ref_loss).abs() < 1e-5, "loss {loss} vs candle's {ref_loss}");
        let grads = reference.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        for ((name, _), ours) in PARAMS.iter().zip(split(&trainer.grads)) {
            let var: &Var = &vars[*name];
            let theirs = grads.get(var).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let diff = ours.iter().zip(&theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff / scale < 1e-5, "gradient of {name} differs by {diff} (largest entry {scale})");
        }
    }

    /// Evaluation gives candle's stock-op logits: same accuracy and loss.
    #[test]
    fn evaluation_matches_the_stock_model() {
        let device = Device::Cpu;
        let start = ModelFile::initial(5).unwrap();
        let set = random_set(37, 4);
        let ours = Network::from_model(&start).unwrap().evaluate(&set, 16).unwrap();
        let varmap = start.to_varmap(&device).unwrap();
        let model = Model::from_varmap(&varmap, &device).unwrap();
        let indices: Vec<usize> = (0..37).collect();
        let (xs, ys) = set.batch(&indices, &device).unwrap();
        let logits = model.forward_stock(&xs, None).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &ys).unwrap().to_scalar::<f32>().unwrap() as f64;
        let predicted = logits.argmax(candle_core::D::Minus1).unwrap().to_vec1::<u32>().unwrap();
        let right = predicted.iter().zip(ys.to_vec1::<u32>().unwrap()).filter(|(p, y)| **p == *y).count();
        assert_eq!(ours.n, 37);
        assert!((ours.loss - loss).abs() < 1e-5, "loss {} vs {loss}", ours.loss);
        assert_eq!(ours.accuracy, right as f64 / 37.0);
    }

    /// A model file survives the round trip through the flat parameter vector.
    #[test]
    fn model_round_trip() {
        let start = ModelFile::initial(2).unwrap();
        let back = Network::from_model(&start).unwrap().to_model(0, 0);
        assert_eq!(back.to_bytes(), start.to_bytes());
    }
}
