//! CSV files of numeric features and one integer label per row, as sensor loggers write
//! them; the format is specified in the module docs of [`crate::data`].

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{Dataset, InputShape, Values};

/// Which column of a CSV file holds the labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LabelColumn {
    /// The column named `label` (ignoring ASCII case) if the file has a header row with
    /// such a column, else the last column.
    #[default]
    Auto,
    /// The last column.
    Last,
    /// The column at this 0-based index.
    Index(usize),
    /// The column with this name in the header row (ignoring ASCII case); the file must
    /// have a header row.
    Name(String),
}

/// How to read a CSV file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CsvOptions {
    /// Which column holds the labels (default: [`LabelColumn::Auto`]).
    pub label_column: LabelColumn,
}

/// Loads a CSV file of numeric features and one integer label column: every row gives one
/// example of `InputShape::Features(columns - 1)` (the features in file order, the label
/// column left out). Every error names the file, and the line and column (1-based) where
/// there is one.
pub fn load_csv(path: &Path, options: &CsvOptions) -> Result<Dataset> {
    let name = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("reading {name}"))?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            let line_no = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            bail!("{name} line {line_no}: not UTF-8 text (byte {} of the file)", e.valid_up_to() + 1)
        }
    };
    // Spreadsheet programs start UTF-8 files with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line)).collect();
    // Blank lines are allowed at the end only: one inside the data may mean a lost row.
    let Some(n_lines) = lines.iter().rposition(|line| !line.trim().is_empty()).map(|last| last + 1) else {
        bail!("reading {name}: the file is empty");
    };
    let first: Vec<&str> = lines[0].split(',').map(str::trim).collect();
    let n_fields = first.len();
    if n_fields < 2 {
        bail!("{name} line 1: {n_fields} field, expected at least 2 (one or more features and a label)");
    }
    let header = first.iter().any(|field| field.parse::<f64>().is_err());
    let label_col = label_column(&options.label_column, n_fields, header.then_some(&first[..]), &name.to_string())?;
    let n_features = n_fields - 1;
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in lines.iter().enumerate().take(n_lines).skip(usize::from(header)) {
        let line_no = i + 1;
        if line.trim().is_empty() {
            bail!("{name} line {line_no}: blank line (blank lines are allowed only at the end of the file)");
        }
        let n = line.split(',').count();
        if n != n_fields {
            bail!("{name} line {line_no}: {n} fields, expected {n_fields} (as in line 1)");
        }
        values.reserve(n_features);
        for (col, field) in line.split(',').map(str::trim).enumerate() {
            let column = col + 1;
            if col == label_col {
                let Ok(label) = field.parse::<u8>() else {
                    bail!("{name} line {line_no}, column {column}: label {field:?} is not a class number (expected a whole number from 0 to 255)");
                };
                labels.push(label);
                continue;
            }
            if field.is_empty() {
                bail!("{name} line {line_no}, column {column}: empty field, expected a number");
            }
            let Ok(value) = field.parse::<f32>() else {
                bail!("{name} line {line_no}, column {column}: {field:?} is not a number");
            };
            if !value.is_finite() {
                if field.parse::<f64>().is_ok_and(f64::is_finite) {
                    bail!("{name} line {line_no}, column {column}: {field} is too large for a 32-bit float");
                }
                bail!("{name} line {line_no}, column {column}: {field} is not a finite number");
            }
            values.push(value);
        }
    }
    if labels.is_empty() {
        bail!("reading {name}: no examples, only the header row on line 1");
    }
    Ok(Dataset { shape: InputShape::Features(n_features), values: Values::Floats(values), labels })
}

/// The 0-based index of the label column among the `n_fields` fields of line 1, given
/// line 1's names if it is a header row.
fn label_column(choice: &LabelColumn, n_fields: usize, header: Option<&[&str]>, name: &str) -> Result<usize> {
    let find = |wanted: &str, header: &[&str]| -> Result<Option<usize>> {
        let matches: Vec<usize> = (0..header.len()).filter(|&i| unquote(header[i]).eq_ignore_ascii_case(wanted)).collect();
        match matches[..] {
            [] => Ok(None),
            [i] => Ok(Some(i)),
            [a, b, ..] => bail!("{name} line 1: columns {} and {} are both named {wanted:?}; give the label column by index", a + 1, b + 1),
        }
    };
    Ok(match (choice, header) {
        (LabelColumn::Auto, Some(header)) => find("label", header)?.unwrap_or(n_fields - 1),
        (LabelColumn::Auto | LabelColumn::Last, _) => n_fields - 1,
        (LabelColumn::Index(i), _) if *i < n_fields => *i,
        (LabelColumn::Index(i), _) => bail!("{name} line 1: label column index {i} (0-based) is out of range for {n_fields} fields"),
        (LabelColumn::Name(wanted), Some(header)) => match find(wanted, header)? {
            Some(i) => i,
            None => {
                let names: Vec<&str> = header.iter().map(|h| unquote(h)).collect();
                bail!("{name} line 1: no column is named {wanted:?} (the header names {})", names.join(", "))
            }
        },
        (LabelColumn::Name(wanted), None) => bail!(
            "{name}: the label column is named {wanted:?}, but line 1 is not a header (every field is a number); give the label column by index or add a header row"
        ),
    })
}

/// A header name without one pair of surrounding double quotes (R and some loggers quote
/// them).
fn unquote(field: &str) -> &str {
    field.strip_prefix('"').and_then(|f| f.strip_suffix('"')).unwrap_or(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{error_of, write, TempDir};

    /// Loads `text` written to `dir/name` with the label column `label_column`.
    fn load(dir: &TempDir, name: &str, text: &str, label_column: LabelColumn) -> Result<Dataset> {
        let path = write(&dir.0, name, text.as_bytes());
        load_csv(&path, &CsvOptions { label_column })
    }

    /// The features of every example, row by row.
    fn features(set: &Dataset) -> Vec<f32> {
        let mut values = vec![0f32; set.len() * set.values_per_example()];
        set.fill_batch(&(0..set.len()).collect::<Vec<_>>(), &mut values, &mut vec![0; set.len()]);
        values
    }

    #[test]
    fn reads_rows_with_or_without_a_header() {
        let tmp = TempDir::new("csv-header");
        // No header: the last column is the label; CRLF line ends, spaces, a blank last line.
        let set = load(&tmp, "plain.csv", "0.5, -1 ,2\r\n1e2,3.25,0\r\n\r\n", LabelColumn::Auto).unwrap();
        assert_eq!(set.shape(), InputShape::Features(2));
        assert_eq!(set.labels(), &[2, 0]);
        assert_eq!(features(&set), [0.5, -1.0, 100.0, 3.25]);
        // A header with a `label` column, not the last: Auto finds it by name.
        let set = load(&tmp, "named.csv", "\u{feff}temp,Label,hum\n20.5,3,0.4\n21,1,0.5\n", LabelColumn::Auto).unwrap();
        assert_eq!(set.labels(), &[3, 1]);
        assert_eq!(features(&set), [20.5, 0.4, 21.0, 0.5]);
        // A header without `label`: Auto takes the last column; only the label column may
        // be the non-number that makes line 1 a header.
        let set = load(&tmp, "class.csv", "1,2,class\n1,2,7\n", LabelColumn::Auto).unwrap();
        assert_eq!((set.labels(), features(&set)), (&[7u8][..], vec![1.0, 2.0]));
        let set = load(&tmp, "feature-name.csv", "1,x,3\n4,5,6\n", LabelColumn::Auto).unwrap();
        assert_eq!((set.labels(), features(&set)), (&[6u8][..], vec![4.0, 5.0]));
    }

    #[test]
    fn label_column_by_name_index_and_last() {
        let tmp = TempDir::new("csv-label");
        let text = "\"a\",\"kind\",\"label\"\n1,2,3\n4,5,6\n";
        let by_name = load(&tmp, "a.csv", text, LabelColumn::Name("KIND".into())).unwrap();
        assert_eq!((by_name.labels(), features(&by_name)), (&[2u8, 5][..], vec![1.0, 3.0, 4.0, 6.0]));
        let by_index = load(&tmp, "a.csv", text, LabelColumn::Index(0)).unwrap();
        assert_eq!((by_index.labels(), features(&by_index)), (&[1u8, 4][..], vec![2.0, 3.0, 5.0, 6.0]));
        let last = load(&tmp, "a.csv", "1,2,3\n4,5,6\n", LabelColumn::Last).unwrap();
        assert_eq!(last.labels(), &[3, 6]);
        let by_index = load(&tmp, "a.csv", "1,2,3\n4,5,6\n", LabelColumn::Index(1)).unwrap();
        assert_eq!((by_index.labels(), features(&by_index)), (&[2u8, 5][..], vec![1.0, 3.0, 4.0, 6.0]));
        assert_eq!(CsvOptions::default().label_column, LabelColumn::Auto);
    }

    #[test]
    fn label_column_errors() {
        let tmp = TempDir::new("csv-label-errors");
        let err = error_of(load(&tmp, "d.csv", "x,y,z\n1,2,3\n", LabelColumn::Name("class".into())));
        assert!(err.ends_with("d.csv line 1: no column is named \"class\" (the header names x, y, z)"), "{err}");
        let err = error_of(load(&tmp, "d.csv", "1,2,3\n", LabelColumn::Name("label".into())));
        assert!(err.ends_with("d.csv: the label column is named \"label\", but line 1 is not a header (every field is a number); give the label column by index or add a header row"), "{err}");
        let err = error_of(load(&tmp, "d.csv", "1,2,3\n", LabelColumn::Index(3)));
        assert!(err.ends_with("d.csv line 1: label column index 3 (0-based) is out of range for 3 fields"), "{err}");
        let err = error_of(load(&tmp, "d.csv", "label,x,LABEL\n1,2,3\n", LabelColumn::Auto));
        assert!(err.ends_with("d.csv line 1: columns 1 and 3 are both named \"label\"; give the label column by index"), "{err}");
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        let tmp = TempDir::new("csv-errors");
        let header = "a,b,c,label\n";
        let cases = [
            ("ragged.csv", format!("{header}1,2,3,0\n1,2,0\n"), "ragged.csv line 3: 3 fields, expected 4 (as in line 1)"),
            ("abc.csv", format!("{header}1,2,3,0\n1,2,abc,0\n"), "abc.csv line 3, column 3: \"abc\" is not a number"),
            ("nan.csv", format!("{header}1,2,NaN,0\n"), "nan.csv line 2, column 3: NaN is not a finite number"),
            ("inf.csv", format!("{header}-inf,2,3,0\n"), "inf.csv line 2, column 1: -inf is not a finite number"),
            ("big.csv", format!("{header}1,1e39,3,0\n"), "big.csv line 2, column 2: 1e39 is too large for a 32-bit float"),
            ("empty-field.csv", format!("{header}1,,3,0\n"), "empty-field.csv line 2, column 2: empty field, expected a number"),
            (
                "half.csv",
                format!("{header}1,2,3,0\n1,2,3,2.5\n"),
                "half.csv line 3, column 4: label \"2.5\" is not a class number (expected a whole number from 0 to 255)",
            ),
            ("big-label.csv", format!("{header}1,2,3,256\n"), "big-label.csv line 2, column 4: label \"256\" is not a class number"),
            ("negative.csv", format!("{header}1,2,3,-1\n"), "negative.csv line 2, column 4: label \"-1\" is not a class number"),
            (
                "blank.csv",
                format!("{header}1,2,3,0\n\n1,2,3,0\n"),
                "blank.csv line 3: blank line (blank lines are allowed only at the end of the file)",
            ),
            ("empty.csv", String::new(), "empty.csv: the file is empty"),
            ("spaces.csv", " \n\r\n".to_string(), "spaces.csv: the file is empty"),
            ("header-only.csv", header.to_string(), "header-only.csv: no examples, only the header row on line 1"),
            (
                "one-column.csv",
                "1\n2\n".to_string(),
                "one-column.csv line 1: 1 field, expected at least 2 (one or more features and a label)",
            ),
        ];
        for (name, text, want) in cases {
            let err = error_of(load(&tmp, name, &text, LabelColumn::Auto));
            let path = tmp.0.join(name).display().to_string();
            assert!(err.contains(&want.replacen(name, &path, 1)), "{name}: got {err:?}, expected it to contain {want:?}");
        }
        let path = write(&tmp.0, "latin1.csv", b"a,label\n\xe9,1\n");
        let err = error_of(load_csv(&path, &CsvOptions::default()));
        assert!(err.contains("latin1.csv line 2: not UTF-8 text (byte 9 of the file)"), "{err}");
        let err = error_of(load_csv(&tmp.0.join("missing.csv"), &CsvOptions::default()));
        assert!(err.starts_with(&format!("reading {}", tmp.0.join("missing.csv").display())), "{err}");
    }
}
