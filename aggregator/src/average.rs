//! `fl-aggregator average` (not written yet).
use std::ffi::OsString;

/// Parses the flags of `fl-aggregator average` and runs it.
pub fn main(_args: Vec<OsString>) -> anyhow::Result<()> {
    anyhow::bail!("`average` is not implemented yet")
}
