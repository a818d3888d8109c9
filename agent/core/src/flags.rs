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
