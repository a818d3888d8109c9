//! Private-network swarm keys in Kubo's `swarm.key` format, one per deployment: nodes
//! that do not hold the same key cannot open a connection to each other (libp2p pnet).

use anyhow::{bail, Context, Result};
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

/// The first two lines of a Kubo swarm key (go-libp2p `pnet` v1 format, base16 encoding).
const HEADER: &str = "/key/swarm/psk/1.0.0/\n/base16/\n";

/// A 32-byte pre-shared key for a private IPFS network.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey([u8; 32]);

impl SwarmKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SwarmKey> {
        // /dev/urandom rather than a random-number crate: every target (Linux on x86-64 and
        // Raspberry Pi boards) has it, and one read of 32 bytes needs nothing more.
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .context("reading 32 random bytes from /dev/urandom for a swarm key")?;
        Ok(SwarmKey(key))
    }

    /// Parses Kubo's three-line format: `/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits.
    pub fn parse(text: &str) -> Result<SwarmKey> {
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        if lines.len() < 3 || lines[0] != "/key/swarm/psk/1.0.0/" || lines[1] != "/base16/" {
            bail!("expected Kubo's swarm key format: /key/swarm/psk/1.0.0/, /base16/, 64 hex digits on three lines");
        }
        if lines[3..].iter().any(|l| !l.trim().is_empty()) {
            bail!("unexpected text after the key's third line");
        }
        let hex = lines[2].trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("expected 64 hex digits on the third line, found {:?}", hex.chars().take(80).collect::<String>());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("hex digit")?;
        }
        Ok(SwarmKey(key))
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<SwarmKey> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading swarm key {}", path.display()))?;
        SwarmKey::parse(&text).with_context(|| format!("reading swarm key {}", path.display()))
    }

    /// The file contents, exactly as Kubo's key generators write them.
    pub fn to_kubo_format(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{HEADER}{hex}\n")
    }

    /// Writes the key to a new file readable by its owner only; never overwrites a file,
    /// so an existing network's key cannot be lost by accident.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).with_context(|| format!("creating swarm key {}", path.display()))?;
        file.write_all(self.to_kubo_format().as_bytes()).with_context(|| format!("writing swarm key {}", path.display()))
    }
}

impl fmt::Debug for SwarmKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwarmKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubo_format_round_trips() {
        let key = SwarmKey::generate().unwrap();
        let text = key.to_kubo_format();
        assert!(text.starts_with(HEADER) && text.ends_with('\n') && text.lines().count() == 3);
        assert_eq!(SwarmKey::parse(&text).unwrap(), key);
        assert_ne!(SwarmKey::generate().unwrap(), key, "two generated keys are equal");
        // Without the final newline, and with CRLF line ends, as some generators write it.
        assert_eq!(SwarmKey::parse(text.trim_end()).unwrap(), key);
        assert_eq!(SwarmKey::parse(&text.replace('\n', "\r\n")).unwrap(), key);
    }

    #[test]
    fn rejects_malformed_keys() {
        let hex = "00".repeat(32);
        assert!(SwarmKey::parse(&format!("{HEADER}{hex}\n")).is_ok());
        assert!(SwarmKey::parse(&format!("/key/swarm/psk/1.0.0/\n/base64/\n{hex}\n")).is_err());
        assert!(SwarmKey::parse(&format!("{HEADER}{}\n", &hex[1..])).is_err());
        assert!(SwarmKey::parse(&format!("{HEADER}{}zz\n", &hex[2..])).is_err());
        assert!(SwarmKey::parse(&format!("{HEADER}{hex}\nextra\n")).is_err());
        assert!(SwarmKey::parse("").is_err());
    }
}
