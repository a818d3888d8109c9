//! `fl-aggregator run` (not written yet).
use std::ffi::OsString;

/// Parses the flags of `fl-aggregator run` and runs it.
pub fn main(_args: Vec<OsString>) -> anyhow::Result<()> {
    anyhow::bail!("`run` is not implemented yet")
}
