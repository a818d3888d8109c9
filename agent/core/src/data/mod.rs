//! A learner's data: the loaders of every format a board can bring (MNIST, IDX of any
//! shape, CSV, class folders of images), the held-out test split, and the deterministic
//! partition of a training set across learners (IID or label-skewed).
//!
//! # Examples and shapes
//!
//! A federation declares its model's input, an [`InputShape`]: an image of height H,
//! width W and C channels (`28x28x1 image`), or a flat vector of F numbers (`13 features`),
//! and a class count. Every example of a [`Dataset`] has that shape and a label, a class
//! number from 0 to 255 (one byte). [`Dataset::check_fits`] says in one sentence when a
//! board's data does not fit the model.
//!
//! Images are held as bytes, one per value (the 60,000 MNIST training images take 47 MB),
//! channels-last within an example (row by row, each pixel's channels together: HWC), and
//! turned into f32 as `byte / 255` only when a batch is built. CSV features are held as f32,
//! as written in the file (scale them before logging them if the model needs it).
//!
//! # Formats
//!
//! ## IDX (MNIST, Fashion-MNIST)
//!
//! The format of <http://yann.lecun.com/exdb/mnist/>: a big-endian header of a magic number
//! and one u32 per dimension, then the unsigned bytes, row-major.
//!
//! | file    | magic        | dimensions               | shape                      |
//! |---------|--------------|--------------------------|----------------------------|
//! | images  | `0x00000803` | count, height, width     | `HxWx1 image` (grey)       |
//! | images  | `0x00000804` | count, height, width, C  | `HxWxC image` (channels last) |
//! | labels  | `0x00000801` | count                    | one class number per image |
//!
//! Each file may be gzip-compressed (recognised by its first two bytes, not its name).
//! [`Mnist::load`] insists on 28x28 grey images with labels 0-9; [`load_idx`] takes any
//! shape and any label. Fashion-MNIST ships exactly like MNIST.
//!
//! ## CSV (sensor loggers)
//!
//! [`load_csv`] reads UTF-8 text, one example per line: numeric feature columns and one
//! label column, giving `InputShape::Features(columns - 1)` (the features in file order,
//! the label column left out).
//!
//! - Fields are separated by `,` and trimmed of spaces and tabs; there is no quoting (a
//!   field is everything between two commas). Lines end in `\n` or `\r\n`; a leading
//!   UTF-8 byte-order mark is skipped; blank lines are allowed at the end of the file only.
//! - Header: line 1 is a header row if any of its fields is not a number (as Rust's `f64`
//!   parser reads numbers), else it is the first example. Header names may be wrapped in
//!   double quotes, which are dropped.
//! - Label column ([`CsvOptions::label_column`]): by default ([`LabelColumn::Auto`]) the
//!   column named `label` if there is a header with one, else the last column;
//!   [`LabelColumn::Last`], [`LabelColumn::Index`] (0-based) or [`LabelColumn::Name`] (needs
//!   a header) choose it explicitly. Names are compared ignoring ASCII case.
//! - Features are decimal numbers (`-1`, `0.25`, `1e-3`), read as f32 and kept as they are
//!   (no scaling); NaN, infinities and numbers beyond f32's range are errors. A label is a
//!   whole number from 0 to 255 written as digits (`3`, not `3.0`).
//! - Every row has as many fields as line 1; the file holds at least one example.
//!
//! Every error names the file, the line and, for a field, its column (both 1-based):
//! `data.csv line 7: 12 fields, expected 14 (as in line 1)`, `data.csv line 7, column 3:
//! "abc" is not a number`, `data.csv line 9, column 14: label "2.5" is not a class number`.
//!
//! ## Class folders of images (a board's camera)
//!
//! [`load_image_folder`] reads `root/<class>/<file>`: one sub-folder of `root` per class,
//! holding PNG and JPEG files (`.png`, `.jpg`, `.jpeg`, in any case) directly inside it.
//!
//! - Labels ([`class_folders`] gives the mapping to print): if every class folder's name is
//!   a whole number written as digits (`0`, `7`, `012`), that number is the label (at most
//!   255, and no two folders may name the same number); otherwise the folders sorted by
//!   name (byte order, so `B` before `a`) get labels 0, 1, 2, ...
//! - Ignored: files with other extensions, folders inside class folders, files directly in
//!   `root`, and folders whose name starts with `.`. A file with an image extension that
//!   cannot be read or decoded is an error naming it.
//! - Files are read in path order, so the same folder always gives the same set.
//! - Every image has the height and width of the first (in path order); it is decoded to
//!   1 channel (grey, colour converted to luma) or 3 (RGB) as asked, whatever the file
//!   holds (alpha is dropped, 16-bit samples become 8-bit). The examples are
//!   `HxWx1 image` or `HxWx3 image`, held as bytes.
//!
//! # A learner's data: [`load_source`]
//!
//! A [`DataSource`] names a format ([`DataFormat`]: `mnist`, `idx`, `csv`, `images`), the
//! training data and where the test set comes from:
//!
//! | format   | `train`                                   | `test` (or `test_fraction`)               |
//! |----------|-------------------------------------------|-------------------------------------------|
//! | `mnist`  | the MNIST folder (`train-*` and `t10k-*`) | neither: MNIST's own `t10k-*` files       |
//! | `idx`    | a folder with `train-images-idx3-ubyte` (or `idx4`) and `train-labels-idx1-ubyte`, each raw or `.gz` | a folder with the `t10k-*` files (often the same folder) |
//! | `csv`    | a CSV file                                | a CSV file                                |
//! | `images` | the root of the class folders (`channels` 1 or 3) | another root                      |
//!
//! Every format but `mnist` needs exactly one of `test` and `test_fraction`. A test
//! fraction holds out `round(fraction * n)` examples of the training data, chosen by
//! [`split_off_test`] with the source's seed (the same data and seed give the same split).
//! Both sets must have the same shape; whether they fit the federation's model is
//! [`Dataset::check_fits`]'s question.

use std::fmt;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::rng::Rng;

mod csv;
mod idx;
mod images;
mod source;
#[cfg(test)]
mod testutil;

pub use csv::{load_csv, CsvOptions, LabelColumn};
pub use idx::{load_idx, read_idx_images, read_images, read_labels, Mnist};
pub use images::{class_folders, load_image_folder};
pub use source::{load_eval, load_source, split_off_test, DataFormat, DataSource};

/// MNIST images are 28 x 28 grey levels.
pub const IMAGE_SIDE: usize = 28;
/// Bytes per MNIST image.
pub const IMAGE_BYTES: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Number of MNIST classes (digits).
pub const N_CLASSES: usize = 10;
/// The shape of an MNIST image.
pub const MNIST_SHAPE: InputShape = InputShape::Image { height: IMAGE_SIDE, width: IMAGE_SIDE, channels: 1 };

/// What one example is: an image (channels last) or a flat vector of features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputShape {
    /// `height x width` pixels of `channels` values each (1: grey, 3: RGB).
    Image { height: usize, width: usize, channels: usize },
    /// A flat vector of this many numbers (a CSV row without its label).
    Features(usize),
}

impl InputShape {
    /// Values per example: `height * width * channels`, or the number of features.
    pub fn values(&self) -> usize {
        match *self {
            InputShape::Image { height, width, channels } => height * width * channels,
            InputShape::Features(n) => n,
        }
    }

    /// [`InputShape::values`], or `None` if it is zero or overflows (a corrupt header).
    fn checked_values(&self) -> Option<usize> {
        let n = match *self {
            InputShape::Image { height, width, channels } => height.checked_mul(width)?.checked_mul(channels)?,
            InputShape::Features(n) => n,
        };
        (n > 0).then_some(n)
    }

    /// "have 13 features" / "are 28x28x1 images": what examples of this shape are, for
    /// messages.
    fn examples_are(&self) -> String {
        match *self {
            InputShape::Image { .. } => format!("are {self}s"),
            InputShape::Features(_) => format!("have {self}"),
        }
    }
}

impl fmt::Display for InputShape {
    /// `28x28x1 image` (height x width x channels) or `13 features`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InputShape::Image { height, width, channels } => write!(f, "{height}x{width}x{channels} image"),
            InputShape::Features(1) => write!(f, "1 feature"),
            InputShape::Features(n) => write!(f, "{n} features"),
        }
    }
}

/// How a set's values are held: bytes for images (scaled by 1/255 when a batch is built),
/// f32 for features.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    Bytes(Vec<u8>),
    Floats(Vec<f32>),
}

/// A set of labelled examples of one [`InputShape`], held as bytes (images: one byte per
/// value, so that the 60,000 MNIST training images take 47 MB) or as f32 (features);
/// batches are converted to f32 on demand.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    shape: InputShape,
    values: Values,
    labels: Vec<u8>,
}

impl Dataset {
    /// Builds a dataset from raw MNIST pixels (`784` bytes per image) and labels 0-9.
    pub fn from_raw(images: Vec<u8>, labels: Vec<u8>) -> Result<Dataset> {
        if images.len() != labels.len() * IMAGE_BYTES {
            bail!("dataset: {} pixel bytes do not make {} images of {IMAGE_BYTES} bytes", images.len(), labels.len());
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= N_CLASSES) {
            bail!("dataset: label {bad} is out of range 0-{}", N_CLASSES - 1);
        }
        Ok(Dataset { shape: MNIST_SHAPE, values: Values::Bytes(images), labels })
    }

    /// Builds a dataset of any shape from bytes (`shape.values()` per example, channels
    /// last for images; each value is `byte / 255` in a batch) and labels (any class
    /// number: [`Dataset::check_fits`] checks them against a model).
    pub fn from_bytes(shape: InputShape, values: Vec<u8>, labels: Vec<u8>) -> Result<Dataset> {
        check_size(shape, values.len(), labels.len())?;
        Ok(Dataset { shape, values: Values::Bytes(values), labels })
    }

    /// Builds a dataset of any shape from f32 values (`shape.values()` per example, taken
    /// as they are in a batch; every one finite) and labels.
    pub fn from_f32(shape: InputShape, values: Vec<f32>, labels: Vec<u8>) -> Result<Dataset> {
        check_size(shape, values.len(), labels.len())?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!("dataset: value {} of example {} is not a finite number", i % shape.values(), i / shape.values());
        }
        Ok(Dataset { shape, values: Values::Floats(values), labels })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// What each example is.
    pub fn shape(&self) -> InputShape {
        self.shape
    }

    /// Values per example (784 for MNIST): the size of one example in a batch.
    pub fn values_per_example(&self) -> usize {
        self.shape.values()
    }

    /// The labels, one byte each.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The largest label, `None` for an empty set.
    pub fn max_label(&self) -> Option<u8> {
        self.labels.iter().copied().max()
    }

    /// The raw bytes of a byte-valued set (images: `values_per_example()` bytes per example,
    /// channels last, in the order of [`Dataset::labels`]; 784 per MNIST image). A set of
    /// f32 features (CSV) has no bytes: it returns an empty slice. To relabel a set of any
    /// kind, use [`Dataset::with_labels`].
    pub fn images(&self) -> &[u8] {
        match &self.values {
            Values::Bytes(bytes) => bytes,
            Values::Floats(_) => &[],
        }
    }

    /// The same examples with new labels (one per example), for any kind of set.
    pub fn with_labels(&self, labels: Vec<u8>) -> Result<Dataset> {
        if labels.len() != self.len() {
            bail!("relabelling a dataset: {} labels for {} examples", labels.len(), self.len());
        }
        Ok(Dataset { shape: self.shape, values: self.values.clone(), labels })
    }

    /// Checks that this data fits a model taking `shape` with `classes` classes; `what`
    /// names the data's origin (a path) and starts the message, e.g. `data/sensors.csv: the
    /// examples have 12 features, but the model expects 13 features`.
    pub fn check_fits(&self, shape: InputShape, classes: usize, what: &str) -> Result<()> {
        if self.shape != shape {
            bail!("{what}: the examples {}, but the model expects {}", self.shape.examples_are(), plural(shape));
        }
        if let Some(max) = self.max_label() {
            if usize::from(max) >= classes {
                let known = if classes == 0 { String::new() } else { format!(" (0-{})", classes - 1) };
                bail!("{what}: label {max} is outside the model's {classes} classes{known}");
            }
        }
        Ok(())
    }

    /// The first `n` examples (all of them if there are fewer). Consumes the set and
    /// keeps its buffers, so limiting a set never holds two copies of it.
    pub fn take(mut self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let width = self.values_per_example();
        match &mut self.values {
            Values::Bytes(v) => v.truncate(n * width),
            Values::Floats(v) => v.truncate(n * width),
        }
        self.labels.truncate(n);
        self
    }

    /// The examples at `indices`, in that order (a learner's shard).
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let width = self.values_per_example();
        let values = match &self.values {
            Values::Bytes(v) => Values::Bytes(select_rows(v, width, indices)),
            Values::Floats(v) => Values::Floats(select_rows(v, width, indices)),
        };
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Dataset { shape: self.shape, values, labels }
    }

    /// The examples at `indices`, in ascending index order, compacted inside this set's
    /// own buffers: a learner cutting its shard out of the full training set never holds
    /// the shard and the full set at once. Fails on an index out of range or repeated.
    pub fn into_subset(mut self, mut indices: Vec<usize>) -> Result<Dataset> {
        indices.sort_unstable();
        if let Some(pair) = indices.windows(2).find(|w| w[0] == w[1]) {
            bail!("dataset subset: index {} is repeated", pair[0]);
        }
        if let Some(&last) = indices.last() {
            if last >= self.len() {
                bail!("dataset subset: index {last} is out of range for {} examples", self.len());
            }
        }
        let width = self.values_per_example();
        match &mut self.values {
            Values::Bytes(v) => compact_rows(v, width, &indices),
            Values::Floats(v) => compact_rows(v, width, &indices),
        }
        compact_rows(&mut self.labels, 1, &indices);
        Ok(self)
    }

    /// Fills `values` (`indices.len() * values_per_example()` numbers) with the examples at
    /// `indices` as f32, in storage order (channels last for images): bytes scaled to
    /// [0, 1] (as in the paper's Keras code), features as they are; and `labels` with their
    /// labels. Panics if an index is out of range or a buffer has the wrong size, which are
    /// programming errors (indices come from `0..len()`).
    pub fn fill_batch(&self, indices: &[usize], values: &mut [f32], labels: &mut [u32]) {
        let width = self.values_per_example();
        assert_eq!(values.len(), indices.len() * width, "batch value buffer size");
        assert_eq!(labels.len(), indices.len(), "batch label buffer size");
        match &self.values {
            // MNIST's size as a constant lets the compiler unroll and vectorise the
            // conversion: twice as fast as with a run-time width (measured).
            Values::Bytes(bytes) if width == IMAGE_BYTES => scale_bytes::<IMAGE_BYTES>(bytes, indices, values),
            Values::Bytes(bytes) => {
                for (&i, dst) in indices.iter().zip(values.chunks_exact_mut(width)) {
                    scale_row(dst, &bytes[i * width..(i + 1) * width]);
                }
            }
            Values::Floats(floats) => {
                for (&i, dst) in indices.iter().zip(values.chunks_exact_mut(width)) {
                    dst.copy_from_slice(&floats[i * width..(i + 1) * width]);
                }
            }
        }
        for (&i, label) in indices.iter().zip(labels.iter_mut()) {
            *label = self.labels[i] as u32;
        }
    }

    /// A batch as tensors: values `(n, C, H, W)` for images (channels first, as candle's
    /// convolutions take them; `(n, 1, 28, 28)` for MNIST) or `(n, F)` for features, and
    /// labels `(n,)` u32, as [`Dataset::fill_batch`] makes them.
    pub fn batch(&self, indices: &[usize], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let n = indices.len();
        let mut values = vec![0f32; n * self.values_per_example()];
        let mut labels = vec![0u32; n];
        self.fill_batch(indices, &mut values, &mut labels);
        let xs = match self.shape {
            InputShape::Image { height, width, channels: 1 } => Tensor::from_vec(values, (n, 1, height, width), device)?,
            InputShape::Image { height, width, channels } => {
                Tensor::from_vec(values, (n, height, width, channels), device)?.permute((0, 3, 1, 2))?.contiguous()?
            }
            InputShape::Features(f) => Tensor::from_vec(values, (n, f), device)?,
        };
        let ys = Tensor::from_vec(labels, n, device)?;
        Ok((xs, ys))
    }
}

/// [`Dataset::fill_batch`] for byte rows of a width known at compile time.
fn scale_bytes<const WIDTH: usize>(bytes: &[u8], indices: &[usize], values: &mut [f32]) {
    for (&i, dst) in indices.iter().zip(values.chunks_exact_mut(WIDTH)) {
        scale_row(dst, &bytes[i * WIDTH..(i + 1) * WIDTH]);
    }
}

/// One example's bytes as values in [0, 1].
#[inline(always)]
fn scale_row(dst: &mut [f32], src: &[u8]) {
    for (d, &p) in dst.iter_mut().zip(src) {
        *d = p as f32 / 255.0;
    }
}

/// "13 features" / "28x28x1 images", for "the model expects ...".
fn plural(shape: InputShape) -> String {
    match shape {
        InputShape::Image { .. } => format!("{shape}s"),
        InputShape::Features(_) => shape.to_string(),
    }
}

/// Checks that `n_values` values make `n_labels` examples of `shape`.
fn check_size(shape: InputShape, n_values: usize, n_labels: usize) -> Result<()> {
    let Some(width) = shape.checked_values() else {
        bail!("dataset: a {shape} has no values or too many to count");
    };
    if n_labels.checked_mul(width) != Some(n_values) {
        bail!("dataset: {n_values} values do not make {n_labels} examples of {width} values ({shape})");
    }
    Ok(())
}

/// The rows (of `width` items) at `indices`, in that order.
fn select_rows<T: Copy>(items: &[T], width: usize, indices: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(indices.len() * width);
    for &i in indices {
        out.extend_from_slice(&items[i * width..(i + 1) * width]);
    }
    out
}

/// Keeps only the rows (of `width` items) at the ascending, distinct `indices`, moved to
/// the front in place, and frees the rest.
fn compact_rows<T: Copy>(items: &mut Vec<T>, width: usize, indices: &[usize]) {
    // Ascending indices: row `i` moves to position `k <= i`, never over one not yet moved.
    for (k, &i) in indices.iter().enumerate() {
        if k != i {
            items.copy_within(i * width..(i + 1) * width, k * width);
        }
    }
    items.truncate(indices.len() * width);
    items.shrink_to_fit();
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// Shuffled, equal shards (the paper's 30,000 / 30,000 for two learners); the
    /// remainder of an uneven division is left out so every shard has the same size.
    Iid,
    /// Label-skewed: for each class, the shares of the learners are drawn from a
    /// symmetric Dirichlet(alpha); small alpha gives strongly skewed shards.
    Dirichlet(f64),
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    /// Parses `iid` or `dirichlet:ALPHA`.
    fn from_str(text: &str) -> Result<Split> {
        if text == "iid" {
            return Ok(Split::Iid);
        }
        if let Some(alpha) = text.strip_prefix("dirichlet:") {
            let alpha: f64 = alpha.parse().with_context(|| format!("split {text:?}: alpha {alpha:?} is not a number"))?;
            if !(alpha > 0.0 && alpha.is_finite()) {
                bail!("split {text:?}: alpha must be a positive number");
            }
            return Ok(Split::Dirichlet(alpha));
        }
        bail!("split {text:?}: expected `iid` or `dirichlet:ALPHA`")
    }
}

/// Splits the example indices `0..labels.len()` across `n_learners`, deterministically
/// for a given `seed`. Every index goes to at most one learner.
pub fn partition(labels: &[u8], n_learners: usize, split: Split, seed: u64) -> Result<Vec<Vec<usize>>> {
    if n_learners == 0 {
        bail!("partition: the number of learners must be at least 1");
    }
    if labels.len() < n_learners {
        bail!("partition: {} examples cannot be split across {n_learners} learners", labels.len());
    }
    let mut rng = Rng::new(seed);
    match split {
        Split::Iid => {
            let mut indices: Vec<usize> = (0..labels.len()).collect();
            rng.shuffle(&mut indices);
            let shard = labels.len() / n_learners;
            Ok(indices.chunks_exact(shard).take(n_learners).map(|c| c.to_vec()).collect())
        }
        Split::Dirichlet(alpha) => {
            let mut shards = vec![Vec::new(); n_learners];
            // MNIST's ten classes as always (so its draws are unchanged), more if the labels have them.
            let n_classes = labels.iter().map(|&l| usize::from(l) + 1).max().unwrap_or(0).max(N_CLASSES);
            for class in (0..n_classes).map(|c| c as u8) {
                let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
                rng.shuffle(&mut members);
                let shares = rng.dirichlet(alpha, n_learners);
                // Cut points from the cumulative shares; the last learner takes the rest
                // so that no example is lost to rounding.
                let mut start = 0usize;
                let mut cumulative = 0.0;
                for (learner, share) in shares.iter().enumerate() {
                    cumulative += share;
                    let end = if learner + 1 == n_learners {
                        members.len()
                    } else {
                        ((cumulative * members.len() as f64).round() as usize).clamp(start, members.len())
                    };
                    shards[learner].extend_from_slice(&members[start..end]);
                    start = end;
                }
            }
            // Interleave classes within each shard; training shuffles anyway, but a shard
            // sorted by class would be a surprising thing to hand out.
            for shard in shards.iter_mut() {
                rng.shuffle(shard);
            }
            if let Some(empty) = shards.iter().position(|s| s.is_empty()) {
                bail!(
                    "partition: learner {} got no examples with dirichlet:{alpha} and seed {seed}; use a larger alpha or another seed",
                    empty + 1
                );
            }
            Ok(shards)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::idx::{IMAGES4_MAGIC, IMAGES_MAGIC, LABELS_MAGIC};
    use super::testutil::{error_of, gzip, idx, write, TempDir};
    use super::*;

    #[test]
    fn into_subset_keeps_the_chosen_examples_in_index_order() {
        let images: Vec<u8> = (0..5u8).flat_map(|i| std::iter::repeat_n(i, IMAGE_BYTES)).collect();
        let set = Dataset::from_raw(images, vec![0, 1, 2, 3, 4]).unwrap();
        let subset = set.clone().into_subset(vec![4, 1, 3]).unwrap();
        assert_eq!(subset, set.select(&[1, 3, 4]));
        assert!(set.clone().into_subset(vec![1, 1]).unwrap_err().to_string().contains("repeated"));
        assert!(set.into_subset(vec![5]).unwrap_err().to_string().contains("out of range"));
    }
    #[test]
    fn reads_raw_and_gzip_by_content_not_name() {
        let tmp = TempDir::new("ok");
        let pixels: Vec<u8> = (0..3 * IMAGE_BYTES).map(|i| (i % 256) as u8).collect();
        let images = idx(IMAGES_MAGIC, &[3, 28, 28], &pixels);
        let labels = idx(LABELS_MAGIC, &[3], &[7, 0, 9]);
        // Gzip content under a plain name, raw content under a .gz name: both must load.
        let ip = write(&tmp.0, "images", &gzip(&images));
        let lp = write(&tmp.0, "labels.gz", &labels);
        let ds = Dataset::load(&ip, &lp).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.labels(), &[7, 0, 9]);
        let (xs, ys) = ds.batch(&[2, 0], &Device::Cpu).unwrap();
        assert_eq!(xs.dims(), &[2, 1, 28, 28]);
        assert_eq!(ys.to_vec1::<u32>().unwrap(), vec![9, 7]);
    }

    #[test]
    fn rejects_wrong_magic() {
        let tmp = TempDir::new("magic");
        let p = write(&tmp.0, "labels", &idx(IMAGES_MAGIC, &[1, 28, 28], &[0; IMAGE_BYTES]));
        let err = error_of(read_labels(&p));
        assert!(err.contains("wrong magic number 0x00000803, expected 0x00000801"), "{err}");
        assert!(err.contains(&p.display().to_string()), "{err}");
    }

    #[test]
    fn rejects_truncated_files() {
        let tmp = TempDir::new("trunc");
        let p = write(&tmp.0, "images", &idx(IMAGES_MAGIC, &[2, 28, 28], &[0; IMAGE_BYTES + 5]));
        let err = error_of(read_images(&p));
        assert!(err.contains("header says 2 images (1568 bytes of pixels), found 789 bytes"), "{err}");
        let p = write(&tmp.0, "short", &[0, 0, 8]);
        let err = error_of(read_labels(&p));
        assert!(err.contains("too short for the 8-byte IDX header"), "{err}");
        let p = write(&tmp.0, "labels", &idx(LABELS_MAGIC, &[4], &[1, 2, 3]));
        let err = error_of(read_labels(&p));
        assert!(err.contains("header says 4 labels, found 3"), "{err}");
    }

    #[test]
    fn rejects_label_count_mismatch_and_out_of_range() {
        let tmp = TempDir::new("labels");
        let ip = write(&tmp.0, "images", &idx(IMAGES_MAGIC, &[2, 28, 28], &[0; 2 * IMAGE_BYTES]));
        let lp = write(&tmp.0, "labels", &idx(LABELS_MAGIC, &[3], &[1, 2, 3]));
        let err = error_of(Dataset::load(&ip, &lp));
        assert!(err.contains("expected 2 labels"), "{err}");
        assert!(err.contains("found 3"), "{err}");
        let lp = write(&tmp.0, "labels2", &idx(LABELS_MAGIC, &[2], &[1, 10]));
        let err = error_of(Dataset::load(&ip, &lp));
        assert!(err.contains("label 10 at index 1 is out of range 0-9"), "{err}");
    }

    #[test]
    fn rejects_wrong_image_size_and_missing_dir() {
        let tmp = TempDir::new("dims");
        let p = write(&tmp.0, "images", &idx(IMAGES_MAGIC, &[1, 32, 32], &[0; 1024]));
        let err = error_of(read_images(&p));
        assert!(err.contains("images are 32x32, expected 28x28"), "{err}");
        let err = error_of(Mnist::load(&tmp.0.join("nowhere")));
        assert!(err.contains("make setup"), "{err}");
    }

    #[test]
    fn iid_partition_is_disjoint_equal_and_deterministic() {
        let labels: Vec<u8> = (0..1001).map(|i| (i % 10) as u8).collect();
        let a = partition(&labels, 2, Split::Iid, 5).unwrap();
        assert_eq!(a, partition(&labels, 2, Split::Iid, 5).unwrap());
        assert_ne!(a, partition(&labels, 2, Split::Iid, 6).unwrap());
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![500, 500]);
        let mut all: Vec<usize> = a.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 1000);
    }

    #[test]
    fn dirichlet_partition_covers_everything_and_skews_labels() {
        let labels: Vec<u8> = (0..10_000).map(|i| (i % 10) as u8).collect();
        let shards = partition(&labels, 4, Split::Dirichlet(0.1), 9).unwrap();
        assert_eq!(shards, partition(&labels, 4, Split::Dirichlet(0.1), 9).unwrap());
        let mut all: Vec<usize> = shards.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
        // With alpha = 0.1 some learner holds most of some class; with IID each holds ~1/4.
        let max_share =
            (0..10u8).map(|c| shards.iter().map(|s| s.iter().filter(|&&i| labels[i] == c).count()).max().unwrap()).max().unwrap();
        assert!(max_share > 700, "largest per-class share {max_share} of 1000 is not skewed");
        assert!("dirichlet:0.5".parse::<Split>().unwrap() == Split::Dirichlet(0.5));
        assert!("dirichlet:-1".parse::<Split>().is_err());
        assert!("random".parse::<Split>().is_err());
    }

    #[test]
    fn load_idx_reads_any_shape_raw_or_gzip() {
        let tmp = TempDir::new("idx-any");
        // Two 2x3 grey images (3-D), gzip.
        let grey: Vec<u8> = (0..12).collect();
        let ip = write(&tmp.0, "grey.gz", &gzip(&idx(IMAGES_MAGIC, &[2, 2, 3], &grey)));
        let lp = write(&tmp.0, "grey-labels", &idx(LABELS_MAGIC, &[2], &[0, 42]));
        let set = load_idx(&ip, &lp).unwrap();
        assert_eq!(set.shape(), InputShape::Image { height: 2, width: 3, channels: 1 });
        assert_eq!(set.images(), grey.as_slice());
        assert_eq!(set.labels(), &[0, 42]);
        assert_eq!(set.max_label(), Some(42));
        // Three 2x2 RGB images (4-D), raw.
        let rgb: Vec<u8> = (0..36).collect();
        let ip = write(&tmp.0, "rgb", &idx(IMAGES4_MAGIC, &[3, 2, 2, 3], &rgb));
        let lp = write(&tmp.0, "rgb-labels.gz", &gzip(&idx(LABELS_MAGIC, &[3], &[1, 2, 3])));
        let set = load_idx(&ip, &lp).unwrap();
        assert_eq!(set.shape(), InputShape::Image { height: 2, width: 2, channels: 3 });
        assert_eq!(set.shape().to_string(), "2x2x3 image");
        assert_eq!(set.values_per_example(), 12);
        assert_eq!(set.len(), 3);
        assert_eq!(set.select(&[2]).images(), &rgb[24..36]);
        // MNIST's own reader still insists on 28x28.
        assert!(error_of(read_images(&ip)).contains("wrong magic number 0x00000804, expected 0x00000803"));
    }

    #[test]
    fn load_idx_errors_name_the_file() {
        let tmp = TempDir::new("idx-errors");
        let lp = write(&tmp.0, "labels", &idx(LABELS_MAGIC, &[2], &[0, 1]));
        let p = write(&tmp.0, "floats", &idx(0x0000_0d03, &[2, 2, 2], &[0; 32]));
        let err = error_of(load_idx(&p, &lp));
        assert!(err.contains(&format!("reading images from {}: wrong magic number 0x00000d03, expected 0x00000803", p.display())), "{err}");
        let p = write(&tmp.0, "short4", &idx(IMAGES4_MAGIC, &[2, 2, 2, 3], &[0; 23]));
        let err = error_of(load_idx(&p, &lp));
        assert!(
            err.contains(&format!("{}: header says 2 images of 2x2x3 image (24 bytes of pixels), found 23 bytes", p.display())),
            "{err}"
        );
        let p = write(&tmp.0, "zero-size", &idx(IMAGES_MAGIC, &[2, 0, 2], &[]));
        let err = error_of(load_idx(&p, &lp));
        assert!(err.contains("the header's dimensions [2, 0, 2] make no valid image size"), "{err}");
        let p = write(&tmp.0, "empty", &idx(IMAGES_MAGIC, &[0, 2, 2], &[]));
        let err = error_of(load_idx(&p, &lp));
        assert!(err.contains("the file holds no images"), "{err}");
        let p = write(&tmp.0, "three", &idx(IMAGES_MAGIC, &[3, 1, 1], &[0; 3]));
        let err = error_of(load_idx(&p, &lp));
        assert!(err.contains("expected 3 labels (as many as images in"), "{err}");
        let p = write(&tmp.0, "tiny", &[0, 0]);
        let err = error_of(load_idx(&p, &lp));
        assert!(err.contains("file is 2 bytes, too short for an IDX header"), "{err}");
    }

    /// Two 1x2 RGB images, labels 5 and 6: example i, pixel x, channel c holds
    /// `100 * i + 10 * x + c` (stored channels last).
    fn rgb_set() -> Dataset {
        let bytes: Vec<u8> = (0..2).flat_map(|i| (0..2).flat_map(move |x| (0..3).map(move |c| 100 * i + 10 * x + c))).collect();
        Dataset::from_bytes(InputShape::Image { height: 1, width: 2, channels: 3 }, bytes, vec![5, 6]).unwrap()
    }

    #[test]
    fn batch_is_channels_first_for_colour_images() {
        let set = rgb_set();
        let (xs, ys) = set.batch(&[1, 0], &Device::Cpu).unwrap();
        assert_eq!(xs.dims(), &[2, 3, 1, 2]);
        assert_eq!(ys.to_vec1::<u32>().unwrap(), vec![6, 5]);
        let got: Vec<f32> = xs.flatten_all().unwrap().to_vec1().unwrap();
        // NCHW: example, then channel, then row, then column.
        let mut want = Vec::new();
        for i in [1u8, 0] {
            for c in 0..3u8 {
                for x in 0..2u8 {
                    want.push(f32::from(100 * i + 10 * x + c) / 255.0);
                }
            }
        }
        assert_eq!(got, want);
        let features = Dataset::from_f32(InputShape::Features(2), vec![1.0, 2.0, 3.0, 4.0], vec![0, 1]).unwrap();
        let (xs, _) = features.batch(&[1], &Device::Cpu).unwrap();
        assert_eq!(xs.to_vec2::<f32>().unwrap(), vec![vec![3.0, 4.0]]);
    }

    #[test]
    fn fill_batch_scales_bytes_and_copies_floats() {
        let set = rgb_set();
        let mut values = vec![0f32; 6];
        let mut labels = vec![0u32; 1];
        set.fill_batch(&[1], &mut values, &mut labels);
        assert_eq!(values, [100.0, 101.0, 102.0, 110.0, 111.0, 112.0].map(|v: f32| v / 255.0));
        assert_eq!(labels, [6]);
        let features = Dataset::from_f32(InputShape::Features(3), vec![0.5, -2.0, 1e6, 7.0, 8.0, 9.0], vec![3, 4]).unwrap();
        let mut values = vec![0f32; 6];
        let mut labels = vec![0u32; 2];
        features.fill_batch(&[1, 0], &mut values, &mut labels);
        assert_eq!(values, [7.0, 8.0, 9.0, 0.5, -2.0, 1e6]);
        assert_eq!(labels, [4, 3]);
        assert!(features.images().is_empty());
        let result = std::panic::catch_unwind(|| features.fill_batch(&[0], &mut [0.0; 2], &mut [0]));
        assert!(result.is_err(), "a value buffer of the wrong size must panic");
    }

    #[test]
    fn subsets_and_relabelling_keep_the_shape_and_storage() {
        let features = Dataset::from_f32(InputShape::Features(2), (0..10).map(|v| v as f32).collect(), vec![0, 1, 2, 3, 4]).unwrap();
        let subset = features.clone().into_subset(vec![3, 0]).unwrap();
        assert_eq!(subset, features.select(&[0, 3]));
        assert_eq!(subset.shape(), InputShape::Features(2));
        let mut values = vec![0f32; 4];
        subset.fill_batch(&[0, 1], &mut values, &mut [0; 2]);
        assert_eq!(values, [0.0, 1.0, 6.0, 7.0]);
        assert_eq!(features.clone().take(2), features.select(&[0, 1]));
        let relabelled = features.with_labels(vec![9, 9, 9, 9, 200]).unwrap();
        assert_eq!(relabelled.labels(), &[9, 9, 9, 9, 200]);
        assert_eq!(relabelled.select(&[4]).with_labels(vec![4]).unwrap(), features.select(&[4]));
        assert!(error_of(features.with_labels(vec![1])).contains("1 labels for 5 examples"));
        let rgb = rgb_set();
        assert_eq!(rgb.with_labels(vec![0, 0]).unwrap().images(), rgb.images());
        assert!(error_of(Dataset::from_f32(InputShape::Features(1), vec![f32::NAN], vec![0])).contains("not a finite number"));
        assert!(error_of(Dataset::from_bytes(InputShape::Features(2), vec![0; 3], vec![0])).contains("3 values do not make 1 examples"));
        assert!(error_of(Dataset::from_bytes(InputShape::Features(0), vec![], vec![])).contains("has no values"));
    }

    #[test]
    fn check_fits_names_the_data_and_the_mismatch() {
        let features = Dataset::from_f32(InputShape::Features(12), vec![0.0; 24], vec![3, 11]).unwrap();
        let err = error_of(features.check_fits(InputShape::Features(13), 20, "data/sensors.csv"));
        assert_eq!(err, "data/sensors.csv: the examples have 12 features, but the model expects 13 features");
        let err = error_of(features.check_fits(InputShape::Features(12), 10, "data/sensors.csv"));
        assert_eq!(err, "data/sensors.csv: label 11 is outside the model's 10 classes (0-9)");
        features.check_fits(InputShape::Features(12), 12, "data/sensors.csv").unwrap();
        let err = error_of(rgb_set().check_fits(MNIST_SHAPE, 10, "camera/"));
        assert_eq!(err, "camera/: the examples are 1x2x3 images, but the model expects 28x28x1 images");
        let err = error_of(features.check_fits(MNIST_SHAPE, 10, "x.csv"));
        assert_eq!(err, "x.csv: the examples have 12 features, but the model expects 28x28x1 images");
        assert_eq!(InputShape::Features(13).to_string(), "13 features");
        assert_eq!(MNIST_SHAPE.to_string(), "28x28x1 image");
        assert_eq!(MNIST_SHAPE.values(), IMAGE_BYTES);
    }

    #[test]
    fn dirichlet_partition_covers_classes_beyond_ten() {
        let labels: Vec<u8> = (0..600).map(|i| (i % 12) as u8).collect();
        let shards = partition(&labels, 3, Split::Dirichlet(1.0), 4).unwrap();
        let mut all: Vec<usize> = shards.concat();
        all.sort_unstable();
        assert_eq!(all, (0..600).collect::<Vec<_>>());
    }
}
