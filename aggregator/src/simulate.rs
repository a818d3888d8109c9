//! `fl-aggregator simulate` (not written yet).
use std::ffi::OsString;

/// Parses the flags of `fl-aggregator simulate` and runs it.
pub fn main(_args: Vec<OsString>) -> anyhow::Result<()> {
    anyhow::bail!("`simulate` is not implemented yet")
}
