//! One entry point from a learner's configuration to its training and test sets, whatever
//! the format, and the held-out test split a board or operator chooses.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};

use super::{idx, load_csv, load_idx, load_image_folder, CsvOptions, Dataset, Mnist};
use crate::rng::Rng;

/// Splits `set` into (train, test): `round(fraction * n)` examples chosen by a shuffle
/// seeded with `seed` (the same set, fraction and seed always give the same split) go to
/// the test set; both halves keep the shape and list their examples in ascending index
/// order. Fails unless `fraction` is in (0, 1) and leaves both halves non-empty.
pub fn split_off_test(set: Dataset, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    let n = set.len();
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("test fraction {fraction}: expected a number between 0 and 1 (exclusive)");
    }
    let n_test = (fraction * n as f64).round() as usize;
    if n_test == 0 || n_test == n {
        bail!(
            "test fraction {fraction} of {n} examples leaves {} for training and {n_test} for testing; both need at least one",
            n - n_test
        );
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut order);
    let (test_indices, train_indices) = order.split_at_mut(n_test);
    test_indices.sort_unstable();
    // Copy out the (smaller) test set, then compact the training set in place: the data
    // is never held twice.
    let test = set.select(test_indices);
    let train = set.into_subset(train_indices.to_vec())?;
    Ok((train, test))
}

/// The kinds of data a learner can bring; [`load_source`] reads each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// The MNIST folder (the four files of `make setup`, raw or gzip).
    Mnist,
    /// IDX files of any image shape (Fashion-MNIST and the like).
    Idx,
    /// A CSV file of features and labels.
    Csv,
    /// Class folders of PNG and JPEG images.
    Images,
}

impl DataFormat {
    /// The names [`DataFormat::from_str`] accepts, in the order of the variants.
    pub const NAMES: [&'static str; 4] = ["mnist", "idx", "csv", "images"];

    /// The name of this format in a configuration.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Mnist => "mnist",
            DataFormat::Idx => "idx",
            DataFormat::Csv => "csv",
            DataFormat::Images => "images",
        }
    }
}

impl FromStr for DataFormat {
    type Err = anyhow::Error;
    /// Parses `mnist`, `idx`, `csv` or `images`.
    fn from_str(text: &str) -> Result<DataFormat> {
        match text {
            "mnist" => Ok(DataFormat::Mnist),
            "idx" => Ok(DataFormat::Idx),
            "csv" => Ok(DataFormat::Csv),
            "images" => Ok(DataFormat::Images),
            _ => bail!("data format {text:?}: expected one of {}", DataFormat::NAMES.join(", ")),
        }
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a learner's data is and how to read it (see the module docs of [`crate::data`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DataSource {
    pub format: DataFormat,
    /// `mnist`, `idx`: a folder; `csv`: a file; `images`: the class folders' root.
    pub train: PathBuf,
    /// The test set in the same format as `train` (for `idx`, a folder holding `t10k-*`
    /// files, often the same folder as `train`). Not for `mnist`.
    pub test: Option<PathBuf>,
    /// Instead of `test`: the share of the training data held out for testing. Not for
    /// `mnist`.
    pub test_fraction: Option<f64>,
    /// How to read CSV files (`csv` only).
    pub csv: CsvOptions,
    /// Values per pixel, 1 (grey) or 3 (RGB) (`images` only).
    pub channels: usize,
    /// The seed of the test split (with `test_fraction`).
    pub seed: u64,
}

/// Loads the training and test sets that `source` describes, and checks they have the
/// same shape.
pub fn load_source(source: &DataSource) -> Result<(Dataset, Dataset)> {
    let format = source.format;
    if format == DataFormat::Mnist {
        if source.test.is_some() || source.test_fraction.is_some() {
            bail!(
                "data format mnist: the test set is MNIST's own t10k files in {}; give no test set or test fraction",
                source.train.display()
            );
        }
        let mnist = Mnist::load(&source.train)?;
        return Ok((mnist.train, mnist.test));
    }
    let load = |path: &Path, prefix: &str| -> Result<Dataset> {
        match format {
            DataFormat::Idx => {
                let (images, labels) = idx::find_idx_set(path, prefix)?;
                load_idx(&images, &labels)
            }
            DataFormat::Csv => load_csv(path, &source.csv),
            DataFormat::Images => load_image_folder(path, source.channels),
            DataFormat::Mnist => unreachable!("handled above"),
        }
    };
    let (train, test) = match (&source.test, source.test_fraction) {
        (Some(test_path), None) => (load(&source.train, "train")?, load(test_path, "t10k")?),
        (None, Some(fraction)) => {
            let set = load(&source.train, "train")?;
            split_off_test(set, fraction, source.seed).with_context(|| format!("holding out a test set from {}", source.train.display()))?
        }
        (Some(_), Some(_)) => bail!("data format {format}: give either a test set or a test fraction, not both"),
        (None, None) => {
            let hint = if format == DataFormat::Idx {
                " (the test set may be the training folder itself if it holds the t10k-* files)"
            } else {
                ""
            };
            bail!("data format {format}: give a test set or a test fraction (such as 0.2) to hold out of {}{hint}", source.train.display())
        }
    };
    if train.shape() != test.shape() {
        let test_path = source.test.as_deref().unwrap_or(&source.train);
        bail!(
            "the examples of the test set in {} {}, but those of the training set in {} {}",
            test_path.display(),
            test.shape().examples_are(),
            source.train.display(),
            train.shape().examples_are()
        );
    }
    Ok((train, test))
}

/// The evaluation set of `source` alone, as the aggregator reads it: MNIST's or an IDX
/// folder's t10k files, or the whole CSV file or image folders at `source.train` (its test
/// set and fraction, which split a learner's own data, do not apply and must be unset).
pub fn load_eval(source: &DataSource) -> Result<Dataset> {
    if source.test.is_some() || source.test_fraction.is_some() {
        bail!("evaluation data in {}: the whole set is the test set; give no test set or test fraction", source.train.display());
    }
    match source.format {
        DataFormat::Mnist => Mnist::load_test(&source.train),
        DataFormat::Idx => {
            let (images, labels) = idx::find_idx_set(&source.train, "t10k")?;
            load_idx(&images, &labels)
        }
        DataFormat::Csv => load_csv(&source.train, &source.csv),
        DataFormat::Images => load_image_folder(&source.train, source.channels),
    }
}

impl fmt::Display for DataSource {
    /// `csv data in sensors.csv (test: sensors-test.csv)` and the like, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} data in {}", self.format, self.train.display())?;
        match (&self.test, self.test_fraction) {
            (Some(test), _) => write!(f, " (test: {})", test.display()),
            (None, Some(fraction)) => write!(f, " ({fraction} held out for testing)"),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::{IMAGES4_MAGIC, IMAGES_MAGIC, LABELS_MAGIC};
    use crate::data::testutil::{error_of, gzip, idx, write, TempDir};
    use crate::data::InputShape;

    /// `n` examples of 2 features whose first feature is the example's index.
    fn numbered(n: usize) -> Dataset {
        let values = (0..n).flat_map(|i| [i as f32, -1.0]).collect();
        Dataset::from_f32(InputShape::Features(2), values, (0..n).map(|i| (i % 3) as u8).collect()).unwrap()
    }

    /// The index each example of a [`numbered`] subset came from.
    fn origins(set: &Dataset) -> Vec<usize> {
        let mut values = vec![0f32; set.len() * 2];
        set.fill_batch(&(0..set.len()).collect::<Vec<_>>(), &mut values, &mut vec![0; set.len()]);
        values.chunks(2).map(|v| v[0] as usize).collect()
    }

    #[test]
    fn split_off_test_is_seeded_sized_and_ordered() {
        let (train, test) = split_off_test(numbered(10), 0.25, 7).unwrap();
        // round(2.5) = 3 examples held out.
        assert_eq!((train.len(), test.len()), (7, 3));
        let (a, b) = (origins(&train), origins(&test));
        assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]), "{a:?} {b:?}");
        let mut all = [a.clone(), b.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(train.labels(), a.iter().map(|&i| (i % 3) as u8).collect::<Vec<_>>());
        assert_eq!(train.shape(), InputShape::Features(2));
        assert_eq!(split_off_test(numbered(10), 0.25, 7).unwrap(), (train.clone(), test.clone()));
        let other_seeds: Vec<Vec<usize>> = (8..12).map(|seed| origins(&split_off_test(numbered(10), 0.25, seed).unwrap().1)).collect();
        assert!(other_seeds.iter().any(|o| *o != b), "four other seeds all chose {b:?}");
        for fraction in [0.0, 1.0, -0.5, f64::NAN] {
            let err = error_of(split_off_test(numbered(10), fraction, 1));
            assert!(err.contains("expected a number between 0 and 1 (exclusive)"), "{err}");
        }
        let err = error_of(split_off_test(numbered(10), 0.01, 1));
        assert_eq!(err, "test fraction 0.01 of 10 examples leaves 10 for training and 0 for testing; both need at least one");
        let err = error_of(split_off_test(numbered(3), 0.9, 1));
        assert!(err.contains("leaves 0 for training and 3 for testing"), "{err}");
    }

    fn source(format: DataFormat, train: &Path) -> DataSource {
        DataSource { format, train: train.to_path_buf(), test: None, test_fraction: None, csv: CsvOptions::default(), channels: 1, seed: 3 }
    }

    #[test]
    fn data_format_names() {
        for name in DataFormat::NAMES {
            assert_eq!(name.parse::<DataFormat>().unwrap().to_string(), name);
        }
        let err = error_of("png".parse::<DataFormat>());
        assert_eq!(err, "data format \"png\": expected one of mnist, idx, csv, images");
    }

    #[test]
    fn load_source_reads_each_format_with_a_test_file_or_fraction() {
        let tmp = TempDir::new("source");
        let dir = &tmp.0;
        // IDX as Fashion-MNIST ships it (all four files in one folder), here gzip and 4-D.
        write(dir, "train-images-idx4-ubyte.gz", &gzip(&idx(IMAGES4_MAGIC, &[4, 1, 1, 3], &[7; 12])));
        write(dir, "train-labels-idx1-ubyte.gz", &gzip(&idx(LABELS_MAGIC, &[4], &[0, 1, 2, 3])));
        write(dir, "t10k-images-idx4-ubyte", &idx(IMAGES4_MAGIC, &[2, 1, 1, 3], &[9; 6]));
        write(dir, "t10k-labels-idx1-ubyte", &idx(LABELS_MAGIC, &[2], &[4, 5]));
        let mut idx_source = source(DataFormat::Idx, dir);
        idx_source.test = Some(dir.clone());
        let (train, test) = load_source(&idx_source).unwrap();
        assert_eq!((train.len(), test.len(), test.labels()), (4, 2, &[4u8, 5][..]));
        assert_eq!(train.shape(), InputShape::Image { height: 1, width: 1, channels: 3 });
        idx_source.test = None;
        idx_source.test_fraction = Some(0.5);
        let (train, test) = load_source(&idx_source).unwrap();
        assert_eq!((train.len(), test.len()), (2, 2));
        // CSV with a test file.
        let csv_train = write(dir, "train.csv", b"a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n");
        let csv_test = write(dir, "test.csv", b"9,10,1\n");
        let mut csv_source = source(DataFormat::Csv, &csv_train);
        csv_source.test = Some(csv_test);
        let (train, test) = load_source(&csv_source).unwrap();
        assert_eq!((train.len(), test.len(), test.shape()), (4, 1, InputShape::Features(2)));
        let wide = write(dir, "wide.csv", b"1,2,3,0\n");
        csv_source.test = Some(wide.clone());
        let err = error_of(load_source(&csv_source));
        assert_eq!(
            err,
            format!(
                "the examples of the test set in {} have 3 features, but those of the training set in {} have 2 features",
                wide.display(),
                csv_train.display()
            )
        );
        // Class folders with a fraction.
        let images = dir.join("camera");
        for (class, n) in [("off", 3), ("on", 2)] {
            std::fs::create_dir_all(images.join(class)).unwrap();
            for i in 0..n {
                image::GrayImage::new(2, 2).save(images.join(class).join(format!("{i}.png"))).unwrap();
            }
        }
        let mut images_source = source(DataFormat::Images, &images);
        images_source.test_fraction = Some(0.4);
        let (train, test) = load_source(&images_source).unwrap();
        assert_eq!((train.len(), test.len()), (3, 2));
        assert_eq!(test.shape(), InputShape::Image { height: 2, width: 2, channels: 1 });
    }

    #[test]
    fn load_source_errors() {
        let tmp = TempDir::new("source-errors");
        let dir = &tmp.0;
        let csv = write(dir, "d.csv", b"1,0\n2,1\n");
        let mut both = source(DataFormat::Csv, &csv);
        both.test = Some(csv.clone());
        both.test_fraction = Some(0.5);
        assert_eq!(error_of(load_source(&both)), "data format csv: give either a test set or a test fraction, not both");
        let err = error_of(load_source(&source(DataFormat::Csv, &csv)));
        assert_eq!(err, format!("data format csv: give a test set or a test fraction (such as 0.2) to hold out of {}", csv.display()));
        let mut mnist = source(DataFormat::Mnist, dir);
        mnist.test_fraction = Some(0.1);
        assert!(error_of(load_source(&mnist)).contains("the test set is MNIST's own t10k files"));
        let err = error_of(load_source(&source(DataFormat::Mnist, dir)));
        assert!(err.contains("make setup"), "{err}");
        let err = error_of(load_source(&source(DataFormat::Idx, dir)));
        assert!(err.ends_with("(the test set may be the training folder itself if it holds the t10k-* files)"), "{err}");
        let mut idx_source = source(DataFormat::Idx, dir);
        idx_source.test_fraction = Some(0.5);
        let err = error_of(load_source(&idx_source));
        assert!(err.contains("none of train-images-idx3-ubyte, train-images-idx4-ubyte (or either with .gz) exists"), "{err}");
        write(dir, "train-images-idx3-ubyte", &idx(IMAGES_MAGIC, &[2, 1, 1], &[0, 1]));
        write(dir, "train-images-idx4-ubyte.gz", &gzip(&idx(IMAGES4_MAGIC, &[2, 1, 1, 1], &[0, 1])));
        let err = error_of(load_source(&idx_source));
        assert!(err.contains("both") && err.contains("keep one"), "{err}");
        std::fs::remove_file(dir.join("train-images-idx4-ubyte.gz")).unwrap();
        let err = error_of(load_source(&idx_source));
        assert!(err.contains("neither train-labels-idx1-ubyte nor train-labels-idx1-ubyte.gz exists"), "{err}");
        write(dir, "train-labels-idx1-ubyte", &idx(LABELS_MAGIC, &[2], &[0, 1]));
        let err = error_of(load_source(&DataSource { test_fraction: Some(0.1), ..idx_source.clone() }));
        assert!(err.starts_with(&format!("holding out a test set from {}: test fraction 0.1 of 2 examples", dir.display())), "{err}");
        let (train, test) = load_source(&idx_source).unwrap();
        assert_eq!((train.len(), test.len()), (1, 1));
    }
}
