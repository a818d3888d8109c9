//! The IDX format (MNIST, Fashion-MNIST, any image shape in unsigned bytes), raw or gzip.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Dataset, InputShape, Values, IMAGE_BYTES, IMAGE_SIDE, MNIST_SHAPE, N_CLASSES};

/// Magic number of an IDX file of unsigned bytes with three dimensions (grey images).
pub(super) const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with four dimensions (images with channels).
pub(super) const IMAGES4_MAGIC: u32 = 0x0000_0804;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub(super) const LABELS_MAGIC: u32 = 0x0000_0801;
/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

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
    if let Some(path) = plain_or_gz(dir, name) {
        return Ok(path);
    }
    bail!(
        "looking for MNIST in {}: neither {name} nor {name}.gz exists (run `make setup` to download MNIST into data/mnist)",
        dir.display()
    )
}

/// `dir/name` if it is a file, else `dir/name.gz` if it is one.
fn plain_or_gz(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))].into_iter().find(|p| p.is_file())
}

/// The images and labels files of one IDX set in `dir`, named as MNIST and Fashion-MNIST
/// ship them: `{prefix}-images-idx3-ubyte` (or `idx4` for images with channels) and
/// `{prefix}-labels-idx1-ubyte`, each possibly ending in `.gz`.
pub(super) fn find_idx_set(dir: &Path, prefix: &str) -> Result<(PathBuf, PathBuf)> {
    let idx3 = format!("{prefix}-images-idx3-ubyte");
    let idx4 = format!("{prefix}-images-idx4-ubyte");
    let labels = format!("{prefix}-labels-idx1-ubyte");
    let images = match (plain_or_gz(dir, &idx3), plain_or_gz(dir, &idx4)) {
        (Some(path), None) | (None, Some(path)) => path,
        (Some(a), Some(b)) => bail!("looking for IDX files in {}: both {} and {} exist; keep one", dir.display(), a.display(), b.display()),
        (None, None) => bail!("looking for IDX files in {}: none of {idx3}, {idx4} (or either with .gz) exists", dir.display()),
    };
    let Some(labels_path) = plain_or_gz(dir, &labels) else {
        bail!("looking for IDX files in {}: neither {labels} nor {labels}.gz exists", dir.display());
    };
    Ok((images, labels_path))
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
    let found = word(bytes, 0);
    if found != magic {
        bail!("reading {what} from {}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}", path.display());
    }
    let dims: Vec<usize> = (1..=n_dims).map(|i| word(bytes, i) as usize).collect();
    Ok((dims, header_len))
}

/// The `i`th big-endian u32 of `bytes` (which holds it).
fn word(bytes: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]])
}

/// Reads an MNIST IDX image file: returns the count and the pixels (`count * 784` bytes).
/// Fails unless the images are 28x28 (magic 0x00000803); [`read_idx_images`] takes any shape.
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

/// Reads an IDX image file of any shape: magic 0x00000803 (count, height, width: grey) or
/// 0x00000804 (count, height, width, channels). Returns the shape of one image and the
/// bytes, channels last, `count * shape.values()` of them.
pub fn read_idx_images(path: &Path) -> Result<(InputShape, Vec<u8>)> {
    let mut bytes = read_maybe_gzip(path)?;
    let n_dims = match bytes.get(..4).map(|_| word(&bytes, 0)) {
        Some(IMAGES_MAGIC) => 3,
        Some(IMAGES4_MAGIC) => 4,
        Some(found) => bail!(
            "reading images from {}: wrong magic number 0x{found:08x}, expected 0x{IMAGES_MAGIC:08x} (count, height, width) or 0x{IMAGES4_MAGIC:08x} (count, height, width, channels) for images of unsigned bytes",
            path.display()
        ),
        None => bail!("reading images from {}: file is {} bytes, too short for an IDX header", path.display(), bytes.len()),
    };
    let magic = if n_dims == 3 { IMAGES_MAGIC } else { IMAGES4_MAGIC };
    let (dims, header_len) = parse_idx(&bytes, magic, n_dims, "images", path)?;
    bytes.drain(..header_len);
    let payload = bytes;
    let count = dims[0];
    let shape = InputShape::Image { height: dims[1], width: dims[2], channels: dims.get(3).copied().unwrap_or(1) };
    let Some(expected) = shape.checked_values().and_then(|v| v.checked_mul(count)) else {
        bail!("reading images from {}: the header's dimensions {dims:?} make no valid image size", path.display());
    };
    if payload.len() != expected {
        bail!(
            "reading images from {}: header says {count} images of {shape} ({expected} bytes of pixels), found {} bytes",
            path.display(),
            payload.len()
        );
    }
    Ok((shape, payload))
}

/// Reads an IDX label file (magic 0x00000801) of any class numbers.
fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = read_maybe_gzip(path)?;
    let (dims, header_len) = parse_idx(&bytes, LABELS_MAGIC, 1, "labels", path)?;
    bytes.drain(..header_len);
    let payload = bytes;
    let count = dims[0];
    if payload.len() != count {
        bail!("reading labels from {}: header says {count} labels, found {}", path.display(), payload.len());
    }
    Ok(payload)
}

/// Reads an MNIST IDX label file and checks every label is a digit 0-9.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let payload = read_idx_labels(path)?;
    if let Some(i) = payload.iter().position(|&l| l as usize >= N_CLASSES) {
        bail!("reading labels from {}: label {} at index {i} is out of range 0-{}", path.display(), payload[i], N_CLASSES - 1);
    }
    Ok(payload)
}

/// Checks that a labels file holds one label per image.
fn check_counts(count: usize, labels: &[u8], images_path: &Path, labels_path: &Path) -> Result<()> {
    if labels.len() != count {
        bail!(
            "reading labels from {}: expected {count} labels (as many as images in {}), found {}",
            labels_path.display(),
            images_path.display(),
            labels.len()
        );
    }
    Ok(())
}

/// Loads an IDX images file of any shape ([`read_idx_images`]) and its labels file (any
/// class numbers 0-255; [`Dataset::check_fits`] checks them against a model). Fails on an
/// empty set.
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let (shape, values) = read_idx_images(images)?;
    let count = values.len() / shape.values();
    if count == 0 {
        bail!("reading images from {}: the file holds no images", images.display());
    }
    let labels_read = read_idx_labels(labels)?;
    check_counts(count, &labels_read, images, labels)?;
    Ok(Dataset { shape, values: Values::Bytes(values), labels: labels_read })
}

impl Dataset {
    /// Loads an MNIST image file (28x28) and its label file (0-9) and checks they hold the
    /// same number of examples.
    pub fn load(images_path: &Path, labels_path: &Path) -> Result<Dataset> {
        let (count, images) = read_images(images_path)?;
        let labels = read_labels(labels_path)?;
        check_counts(count, &labels, images_path, labels_path)?;
        Ok(Dataset { shape: MNIST_SHAPE, values: Values::Bytes(images), labels })
    }
}
