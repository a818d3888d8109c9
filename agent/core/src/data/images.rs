//! Class folders of PNG and JPEG images, as a board's camera writes them; the layout is
//! specified in the module docs of [`crate::data`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Dataset, InputShape, Values};

/// The extensions of the image files read (compared ignoring ASCII case).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The class folders under `root` and their labels, in label order: if every folder name
/// is a whole number (digits only, at most 255), that number is the label; otherwise the
/// folders sorted by name get labels 0, 1, 2, ... Folders whose names start with `.` are
/// ignored.
pub fn class_folders(root: &Path) -> Result<Vec<(String, u8)>> {
    let context = || format!("listing the class folders of {}", root.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).with_context(context)? {
        let path = entry.with_context(context)?.path();
        if !path.is_dir() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            bail!("{}: a class folder's name must be UTF-8 text", path.display());
        };
        if !name.starts_with('.') {
            names.push(name.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("{}: no class folders (expected one sub-folder of images per class, such as {0}/0/ and {0}/1/)", root.display());
    }
    let numbered = names.iter().all(|n| n.bytes().all(|b| b.is_ascii_digit()));
    let mut classes = Vec::with_capacity(names.len());
    if numbered {
        for name in names {
            // Digits only, so parsing fails only past u64: far above 255 too.
            match name.parse::<u64>() {
                Ok(label) if label <= 255 => classes.push((name, label as u8)),
                _ => bail!("{}: class {name} is above 255, the largest class number", root.join(&name).display()),
            }
        }
        classes.sort_by_key(|&(_, label)| label);
        if let Some(pair) = classes.windows(2).find(|w| w[0].1 == w[1].1) {
            bail!("{}: the class folders {} and {} are both class {}", root.display(), pair[0].0, pair[1].0, pair[0].1);
        }
    } else {
        if names.len() > 256 {
            bail!("{}: {} class folders, at most 256 classes are supported", root.display(), names.len());
        }
        classes.extend(names.into_iter().enumerate().map(|(label, name)| (name, label as u8)));
    }
    Ok(classes)
}

/// Loads every `.png`, `.jpg` and `.jpeg` file directly inside the class folders of `root`
/// ([`class_folders`]), in path order, decoded to `channels` values per pixel (1: grey,
/// 3: RGB); every image must have the size of the first. Gives `HxWxC image` examples
/// held as bytes.
pub fn load_image_folder(root: &Path, channels: usize) -> Result<Dataset> {
    if channels != 1 && channels != 3 {
        bail!("loading images from {}: channels must be 1 (grey) or 3 (RGB), not {channels}", root.display());
    }
    let mut files: Vec<(PathBuf, u8)> = Vec::new();
    for (name, label) in class_folders(root)? {
        let folder = root.join(&name);
        let context = || format!("listing the images in {}", folder.display());
        for entry in std::fs::read_dir(&folder).with_context(context)? {
            let path = entry.with_context(context)?.path();
            let is_image = path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
            if is_image && path.is_file() {
                files.push((path, label));
            }
        }
    }
    files.sort();
    let Some(first) = files.first().map(|(path, _)| path.clone()) else {
        bail!("{}: no .png, .jpg or .jpeg files in the class folders", root.display());
    };
    let mut values = Vec::new();
    let mut size = None;
    for (path, _) in &files {
        let image = image::ImageReader::open(path)
            .and_then(|reader| reader.with_guessed_format())
            .with_context(|| format!("reading image {}", path.display()))?
            .decode()
            .with_context(|| format!("decoding image {}", path.display()))?;
        let (width, height) = (image.width() as usize, image.height() as usize);
        match size {
            None if height == 0 || width == 0 => bail!("{}: image has no pixels ({height}x{width})", path.display()),
            None => {
                size = Some((height, width));
                values.reserve_exact(files.len() * height * width * channels);
            }
            Some((h, w)) if (h, w) != (height, width) => bail!(
                "{}: image is {height} pixels high and {width} wide, expected {h} high and {w} wide like {}",
                path.display(),
                first.display()
            ),
            Some(_) => {}
        }
        let pixels = if channels == 1 { image.into_luma8().into_raw() } else { image.into_rgb8().into_raw() };
        values.extend_from_slice(&pixels);
    }
    let (height, width) = size.unwrap_or_default();
    let labels = files.iter().map(|&(_, label)| label).collect();
    Ok(Dataset { shape: InputShape::Image { height, width, channels }, values: Values::Bytes(values), labels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{error_of, write, TempDir};
    use image::{GrayImage, Luma, Rgb, RgbImage};

    /// Saves a `width x height` grey image of one level (format from the extension).
    fn grey(path: &Path, width: u32, height: u32, level: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        GrayImage::from_pixel(width, height, Luma([level])).save(path).unwrap();
    }

    /// Saves a `width x height` RGB image of one colour (format from the extension).
    fn rgb(path: &Path, width: u32, height: u32, colour: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_pixel(width, height, Rgb(colour)).save(path).unwrap();
    }

    #[test]
    fn numbered_class_folders_are_labels() {
        let tmp = TempDir::new("images-numbered");
        let root = &tmp.0;
        grey(&root.join("0/b.png"), 3, 2, 10);
        grey(&root.join("0/a.PNG"), 3, 2, 20);
        grey(&root.join("10/x.jpg"), 3, 2, 200);
        grey(&root.join("007/y.JPEG"), 3, 2, 70);
        write(&root.join("0"), "notes.txt", b"not an image");
        grey(&root.join(".thumbnails/t.png"), 1, 1, 0);
        assert_eq!(class_folders(root).unwrap(), vec![("0".into(), 0), ("007".into(), 7), ("10".into(), 10)]);
        let set = load_image_folder(root, 1).unwrap();
        assert_eq!(set.shape(), InputShape::Image { height: 2, width: 3, channels: 1 });
        // Path order: 0/a.PNG, 0/b.png, 007/y.JPEG, 10/x.jpg.
        assert_eq!(set.labels(), &[0, 0, 7, 10]);
        let levels: Vec<u8> = set.images().chunks(6).map(|image| image[0]).collect();
        assert_eq!(levels[..2], [20, 10]);
        // JPEG is lossy; a flat image comes back within a level or two.
        assert!(levels[2].abs_diff(70) <= 2 && levels[3].abs_diff(200) <= 2, "{levels:?}");
        assert!(set.images().chunks(6).all(|image| image.iter().all(|&v| v == image[0])));
        // Same files, same set.
        assert_eq!(load_image_folder(root, 1).unwrap(), set);
    }

    #[test]
    fn named_class_folders_sorted_and_rgb() {
        let tmp = TempDir::new("images-named");
        let root = &tmp.0;
        rgb(&root.join("dog/1.png"), 2, 2, [1, 2, 3]);
        rgb(&root.join("cat/1.png"), 2, 2, [200, 100, 50]);
        grey(&root.join("cat/2.png"), 2, 2, 9);
        rgb(&root.join("2/1.jpg"), 2, 2, [0, 255, 0]);
        assert_eq!(class_folders(root).unwrap(), vec![("2".into(), 0), ("cat".into(), 1), ("dog".into(), 2)]);
        let set = load_image_folder(root, 3).unwrap();
        assert_eq!(set.shape(), InputShape::Image { height: 2, width: 2, channels: 3 });
        assert_eq!(set.labels(), &[0, 1, 1, 2]);
        let pixels: Vec<&[u8]> = set.images().chunks(3).collect();
        assert_eq!(pixels.len(), 16);
        assert!(pixels[0][0] <= 2 && pixels[0][1] >= 253 && pixels[0][2] <= 2, "{:?}", pixels[0]);
        assert!(pixels[4..8].iter().all(|&p| p == [200, 100, 50]));
        assert!(pixels[8..12].iter().all(|&p| p == [9, 9, 9]));
        assert!(pixels[12..16].iter().all(|&p| p == [1, 2, 3]));
        // The same folder in grey: one value per pixel, colour converted to luma.
        let grey_set = load_image_folder(root, 1).unwrap();
        assert_eq!(grey_set.values_per_example(), 4);
        assert_eq!(grey_set.images()[8..12], [9, 9, 9, 9]);
    }

    #[test]
    fn errors_name_the_folder_or_file() {
        let tmp = TempDir::new("images-errors");
        let root = &tmp.0;
        let err = error_of(load_image_folder(root, 2));
        assert!(err.ends_with("channels must be 1 (grey) or 3 (RGB), not 2"), "{err}");
        let err = error_of(load_image_folder(root, 1));
        assert!(
            err.ends_with(&format!(
                "{}: no class folders (expected one sub-folder of images per class, such as {0}/0/ and {0}/1/)",
                root.display()
            )),
            "{err}"
        );
        std::fs::create_dir_all(root.join("a")).unwrap();
        let err = error_of(load_image_folder(root, 1));
        assert!(err.ends_with(&format!("{}: no .png, .jpg or .jpeg files in the class folders", root.display())), "{err}");
        grey(&root.join("a/1.png"), 4, 3, 0);
        grey(&root.join("b/1.png"), 3, 4, 0);
        let err = error_of(load_image_folder(root, 1));
        let (first, other) = (root.join("a/1.png"), root.join("b/1.png"));
        assert!(
            err.ends_with(&format!(
                "{}: image is 4 pixels high and 3 wide, expected 3 high and 4 wide like {}",
                other.display(),
                first.display()
            )),
            "{err}"
        );
        std::fs::remove_file(&other).unwrap();
        let bad = write(&root.join("b"), "0.png", b"not a png at all");
        let err = error_of(load_image_folder(root, 1));
        assert!(err.starts_with(&format!("decoding image {}", bad.display())), "{err}");
        std::fs::remove_dir_all(root.join("a")).unwrap();
        std::fs::remove_dir_all(root.join("b")).unwrap();
        std::fs::create_dir_all(root.join("1")).unwrap();
        std::fs::create_dir_all(root.join("01")).unwrap();
        let err = error_of(class_folders(root));
        assert!(err.ends_with(&format!("{}: the class folders 01 and 1 are both class 1", root.display())), "{err}");
        std::fs::create_dir_all(root.join("256")).unwrap();
        let err = error_of(class_folders(root));
        assert!(err.ends_with(&format!("{}: class 256 is above 255, the largest class number", root.join("256").display())), "{err}");
        let err = error_of(class_folders(&root.join("missing")));
        assert!(err.starts_with(&format!("listing the class folders of {}", root.join("missing").display())), "{err}");
    }
}
