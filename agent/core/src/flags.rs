//! Command-line helpers both binaries share: flag values parsed with the flag's name in
//! the error, and the way every binary ends (the error chain on stderr, a failing status).

use anyhow::{bail, Context, Result};

/// How every binary of the project ends: the error chain on stderr (`{:#}`: each context
/// on one line) and a failing exit status.
pub fn exit_code(program: &str, result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{program}: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses a flag's value (a number, a split, ...), naming the flag in the error.
pub fn number<T: std::str::FromStr>(parser: &mut lexopt::Parser, flag: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let value = parser.value()?;
    let text = value.to_str().with_context(|| format!("{flag}: value is not valid UTF-8"))?;
    text.parse().map_err(|e| anyhow::anyhow!("{flag}: {text:?} is not valid: {e}"))
}

/// Rejects 0 where it makes no sense.
pub fn positive(value: usize, flag: &str) -> Result<usize> {
    if value == 0 {
        bail!("{flag} must be at least 1");
    }
    Ok(value)
}

/// Help for the data flags every command that reads data shares ([`DataFlags`]).
pub const DATA_HELP: &str = "\
  --data PATH          the data: the MNIST or IDX folder, the CSV file, or the root of the
                       class folders of images
  --data-format F      mnist (default), idx, csv or images (agent/core/src/data/mod.rs
                       documents each)
  --test-data PATH     the test set in the same format (idx, csv, images)
  --test-fraction X    or: hold out this share of the data for testing (0 < X < 1)
  --label-column C     csv: the label column, by name or 1-based number (default: the one
                       named `label`, else the last)
";

/// The data flags as given ([`DATA_HELP`]); the agent's configuration file sets the same
/// fields from its keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataFlags {
    /// `--data`.
    pub path: Option<std::path::PathBuf>,
    /// `--data-format`.
    pub format: Option<String>,
    /// `--test-data`.
    pub test: Option<std::path::PathBuf>,
    /// `--test-fraction`.
    pub test_fraction: Option<f64>,
    /// `--label-column`.
    pub label_column: Option<String>,
}

impl DataFlags {
    /// Whether `flag` (without the dashes) is one of the data flags.
    pub fn handles(flag: &str) -> bool {
        matches!(flag, "data" | "data-format" | "test-data" | "test-fraction" | "label-column")
    }

    /// Reads the value of the data flag `flag`.
    pub fn set(&mut self, flag: &str, parser: &mut lexopt::Parser) -> Result<()> {
        match flag {
            "data" => self.path = Some(parser.value()?.into()),
            "data-format" => self.format = Some(number::<String>(parser, "--data-format")?),
            "test-data" => self.test = Some(parser.value()?.into()),
            "test-fraction" => self.test_fraction = Some(number(parser, "--test-fraction")?),
            "label-column" => self.label_column = Some(number::<String>(parser, "--label-column")?),
            other => bail!("--{other} is not a data flag"),
        }
        Ok(())
    }

    /// Values given here win over those of `lower` (flags over a configuration file).
    pub fn or(self, lower: DataFlags) -> DataFlags {
        DataFlags {
            path: self.path.or(lower.path),
            format: self.format.or(lower.format),
            test: self.test.or(lower.test),
            test_fraction: self.test_fraction.or(lower.test_fraction),
            label_column: self.label_column.or(lower.label_column),
        }
    }

    /// The data source for a model whose input is `input` (an image's channels tell how
    /// images are decoded); `seed` seeds the held-out split. `what` names where the path
    /// may be given, for the error when it is missing.
    pub fn source(&self, input: crate::data::InputShape, seed: u64, what: &str) -> Result<crate::data::DataSource> {
        use crate::data::{CsvOptions, DataFormat, DataSource, InputShape, LabelColumn};
        let path = self.path.clone().with_context(|| format!("no data: {what}"))?;
        let format: DataFormat = self.format.as_deref().unwrap_or("mnist").parse()?;
        let label_column = match self.label_column.as_deref() {
            None => LabelColumn::Auto,
            Some("last") => LabelColumn::Last,
            Some(text) => match text.parse::<usize>() {
                Ok(0) => bail!("--label-column 0: columns are numbered from 1"),
                Ok(n) => LabelColumn::Index(n - 1),
                Err(_) => LabelColumn::Name(text.to_string()),
            },
        };
        if self.label_column.is_some() && format != DataFormat::Csv {
            bail!("--label-column goes with --data-format csv only");
        }
        let channels = match input {
            InputShape::Image { channels, .. } => channels,
            InputShape::Features(_) => 1,
        };
        Ok(DataSource {
            format,
            train: path,
            test: self.test.clone(),
            test_fraction: self.test_fraction,
            csv: CsvOptions { label_column },
            channels,
            seed,
        })
    }
}
