//! Operator commands: `deploy`, `learners`, `status` (not written yet).
use std::ffi::OsString;

/// Parses the flags of an operator command and runs it.
pub fn main(command: &str, _args: Vec<OsString>) -> anyhow::Result<()> {
    anyhow::bail!("`{command}` is not implemented yet")
}
