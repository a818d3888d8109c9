//! MNIST in IDX format (raw or gzip), held as bytes until a batch is built, and the
//! deterministic partition of a training set across learners (IID or label-skewed).
//!
//! The IDX format (<http://yann.lecun.com/exdb/mnist/>): a big-endian header of a magic
//! number (0x00000803 for images, 0x00000801 for labels), then one u32 per dimension,
//! then the unsigned bytes.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::rng::Rng;

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
const LABELS_MAGIC: u32 = 0x0000_0801;
/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// MNIST images are 28 x 28 grey levels.
pub const IMAGE_SIDE: usize = 28;
/// Bytes per image.
pub const IMAGE_BYTES: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Number of classes (digits).
pub const N_CLASSES: usize = 10;

/// A set of labelled images, stored as raw bytes (one byte per pixel) so that the 60,000
/// training images take 47 MB; batches are converted to f32 on demand.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u8>,
}

/// The MNIST training and test sets.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// 60,000 training images.
    pub train: Dataset,
    /// 10,000 test images.
    pub test: Dataset,
}

impl Mnist {
    /// Loads the four MNIST files from `dir`, each either as `NAME` or `NAME.gz`.
    pub fn load(dir: &Path) -> Result<Mnist> {
        let train = Dataset::load(&find_file(dir, "train-images-idx3-ubyte")?, &find_file(dir, "train-labels-idx1-ubyte")?)?;
        let test = Dataset::load(&find_file(dir, "t10k-images-idx3-ubyte")?, &find_file(dir, "t10k-labels-idx1-ubyte")?)?;
        Ok(Mnist { train, test })
    }

    /// Loads only the 10,000 test images (the aggregator evaluates, it never trains).
    pub fn load_test(dir: &Path) -> Result<Dataset> {
        Dataset::load(&find_file(dir, "t10k-images-idx3-ubyte")?, &find_file(dir, "t10k-labels-idx1-ubyte")?)
    }
}

/// `dir/name` if it exists, else `dir/name.gz`, else an error naming both.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    bail!(
        "looking for MNIST in {}: neither {name} nor {name}.gz exists (run `make setup` to download MNIST into data/mnist)",
        dir.display()
    )
}

/// Reads a whole file, decompressing it if it starts with the gzip magic bytes (the name
/// is not trusted).
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {}: not a valid gzip stream", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX header: checks the magic and returns the dimensions and the header's
/// length (the payload follows it).
fn parse_idx(bytes: &[u8], magic: u32, n_dims: usize, what: &str, path: &Path) -> Result<(Vec<usize>, usize)> {
    let header_len = 4 + 4 * n_dims;
    if bytes.len() < header_len {
        bail!("reading {what} from {}: file is {} bytes, too short for the {header_len}-byte IDX header", path.display(), bytes.len());
    }
    let word = |i: usize| u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    let found = word(0);
    if found != magic {
        bail!("reading {what} from {}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}", path.display());
    }
    let dims: Vec<usize> = (1..=n_dims).map(|i| word(i) as usize).collect();
    Ok((dims, header_len))
}

/// Reads an IDX image file: returns the count and the pixels (`count * 784` bytes).
pub fn read_images(path: &Path) -> Result<(usize, Vec<u8>)> {
    let mut bytes = read_maybe_gzip(path)?;
    let (dims, header_len) = parse_idx(&bytes, IMAGES_MAGIC, 3, "images", path)?;
    // Drop the header in place: the 47 MB of pixels are never held twice.
    bytes.drain(..header_len);
    let payload = bytes;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows != IMAGE_SIDE || cols != IMAGE_SIDE {
        bail!("reading images from {}: images are {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}", path.display());
    }
    let expected = count * IMAGE_BYTES;
    if payload.len() != expected {
        bail!(
            "reading images from {}: header says {count} images ({expected} bytes of pixels), found {} bytes",
            path.display(),
            payload.len()
        );
    }
    Ok((count, payload))
}

/// Reads an IDX label file and checks every label is a digit 0-9.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = read_maybe_gzip(path)?;
    let (dims, header_len) = parse_idx(&bytes, LABELS_MAGIC, 1, "labels", path)?;
    bytes.drain(..header_len);
    let payload = bytes;
    let count = dims[0];
    if payload.len() != count {
        bail!("reading labels from {}: header says {count} labels, found {}", path.display(), payload.len());
    }
    if let Some(i) = payload.iter().position(|&l| l as usize >= N_CLASSES) {
        bail!("reading labels from {}: label {} at index {i} is out of range 0-{}", path.display(), payload[i], N_CLASSES - 1);
    }
    Ok(payload)
}

impl Dataset {
    /// Loads an image file and its label file and checks they hold the same number of
    /// examples.
    pub fn load(images_path: &Path, labels_path: &Path) -> Result<Dataset> {
        let (count, images) = read_images(images_path)?;
        let labels = read_labels(labels_path)?;
        if labels.len() != count {
            bail!(
                "reading labels from {}: expected {count} labels (as many as images in {}), found {}",
                labels_path.display(),
                images_path.display(),
                labels.len()
            );
        }
        Ok(Dataset { images, labels })
    }

    /// Builds a dataset from raw pixels (`784` bytes per image) and labels.
    pub fn from_raw(images: Vec<u8>, labels: Vec<u8>) -> Result<Dataset> {
        if images.len() != labels.len() * IMAGE_BYTES {
            bail!("dataset: {} pixel bytes do not make {} images of {IMAGE_BYTES} bytes", images.len(), labels.len());
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= N_CLASSES) {
            bail!("dataset: label {bad} is out of range 0-{}", N_CLASSES - 1);
        }
        Ok(Dataset { images, labels })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The labels, one byte each.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The raw pixels, 784 bytes per image, in the order of [`Dataset::labels`].
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// The first `n` examples (all of them if there are fewer). Consumes the set and
    /// keeps its buffers, so limiting a set never holds two copies of it.
    pub fn take(mut self, n: usize) -> Dataset {
        let n = n.min(self.len());
        self.images.truncate(n * IMAGE_BYTES);
        self.labels.truncate(n);
        self
    }

    /// The examples at `indices`, in that order (a learner's shard).
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(&self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]);
            labels.push(self.labels[i]);
        }
        Dataset { images, labels }
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
        // Ascending indices: example `i` moves to position `k <= i`, never over one not yet moved.
        for (k, &i) in indices.iter().enumerate() {
            if k != i {
                self.images.copy_within(i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES, k * IMAGE_BYTES);
                self.labels[k] = self.labels[i];
            }
        }
        self.images.truncate(indices.len() * IMAGE_BYTES);
        self.labels.truncate(indices.len());
        self.images.shrink_to_fit();
        self.labels.shrink_to_fit();
        Ok(self)
    }

    /// Fills `pixels` (`indices.len() * 784` values) with the images at `indices` as f32
    /// scaled to [0, 1] (as in the paper's Keras code) and `labels` with their labels.
    /// Panics if an index is out of range or a buffer has the wrong size, which are
    /// programming errors (indices come from `0..len()`).
    pub fn fill_batch(&self, indices: &[usize], pixels: &mut [f32], labels: &mut [u32]) {
        assert_eq!(pixels.len(), indices.len() * IMAGE_BYTES, "batch pixel buffer size");
        assert_eq!(labels.len(), indices.len(), "batch label buffer size");
        for ((&i, dst), label) in indices.iter().zip(pixels.chunks_exact_mut(IMAGE_BYTES)).zip(labels.iter_mut()) {
            for (d, &p) in dst.iter_mut().zip(&self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]) {
                *d = p as f32 / 255.0;
            }
            *label = self.labels[i] as u32;
        }
    }

    /// A batch as tensors: images `(n, 1, 28, 28)` and labels `(n,)` u32, as
    /// [`Dataset::fill_batch`] makes them.
    pub fn batch(&self, indices: &[usize], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let mut pixels = vec![0f32; indices.len() * IMAGE_BYTES];
        let mut labels = vec![0u32; indices.len()];
        self.fill_batch(indices, &mut pixels, &mut labels);
        let xs = Tensor::from_vec(pixels, (indices.len(), 1, IMAGE_SIDE, IMAGE_SIDE), device)?;
        let ys = Tensor::from_vec(labels, indices.len(), device)?;
        Ok((xs, ys))
    }
}

/// How a training set is split across learners.
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
            for class in 0..N_CLASSES as u8 {
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
    use std::io::Write;

    /// A temporary directory removed on drop (no extra dependency for a test helper).
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("fl-agent-data-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
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

    fn error_of(result: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", result.expect_err("expected an error"))
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
}
