//! `fl-aggregator verify` (not written yet).
use std::ffi::OsString;

/// Parses the flags of `fl-aggregator verify` and runs it.
pub fn main(_args: Vec<OsString>) -> anyhow::Result<()> {
    anyhow::bail!("`verify` is not implemented yet")
}
