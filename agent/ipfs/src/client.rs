//! Blocking client for the Kubo RPC API (`POST /api/v0/...`), which js-ipfs also serves.
//!
//! Every call has a time limit: a `cat` of a CID that no connected peer has waits forever
//! on both Kubo and js-ipfs. Transient failures (connection refused or reset, a gateway or
//! unstructured 5xx answer) are retried a bounded number of times with doubling pauses;
//! a 4xx, a node's own error message and a timeout are not, since repeating them cannot
//! help. Every error names the API URL and, where there is one, the CID.

use crate::cid::{cid_with_layout, Cid, CHUNK_SIZE, MAX_LINKS};
use crate::retry::Backoff;
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::Duration;

/// Time limits and retries of a `Client`.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Limit on one whole request, answer included. A `cat` or `pin/add` of a CID that no
    /// connected peer provides ends with `Error::Timeout` after this long.
    pub timeout: Duration,
    /// Limit on opening the TCP connection (a dead board on the LAN, not a refused port).
    pub connect_timeout: Duration,
    /// Attempts per call when failures are transient (1 = no retry).
    pub attempts: u32,
    /// Pause after the first failed attempt; doubled after each further one.
    pub first_backoff: Duration,
    /// Told of each failed attempt that will be retried (a line saying what failed and
    /// when the next attempt comes), so the program's log shows a flaky link even when
    /// the retry succeeds. `None`: retries are silent.
    pub on_retry: Option<fn(&str)>,
}

impl Default for ClientConfig {
    /// Two minutes per request: a 2.5 MB model moves in about a second between peered
    /// nodes on loopback (agent/ipfs/README.md), so this leaves room for slow boards and Wi-Fi.
    /// Four attempts, 250 ms then 500 ms then 1 s apart: a node restarting is back in
    /// about 2 s (js-ipfs start-up, measured here).
    fn default() -> ClientConfig {
        ClientConfig {
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            attempts: 4,
            first_backoff: Duration::from_millis(250),
            on_retry: None,
        }
    }
}

/// Why a call failed. A caller may match on it: `Timeout` means the content is not
/// (yet) available, `Unreachable` that the node is down, the mismatches that a node or a
/// peer served other bytes than the ones named.
#[derive(Debug)]
pub enum Error {
    /// No connection to the API, even after retries.
    Unreachable { api: String, op: String, attempts: u32, detail: String },
    /// No complete answer within the configured time limit.
    Timeout { api: String, op: String, after: Duration },
    /// The node answered with an error status.
    Api { api: String, op: String, status: u16, message: String },
    /// The node's answer could not be understood.
    BadReply { api: String, op: String, detail: String },
    /// The content is larger than the caller allows.
    TooLarge { api: String, op: String, max_bytes: u64 },
    /// The node's CID for an upload differs from the one computed locally for the same bytes.
    CidMismatch { api: String, local: String, node: String },
    /// The downloaded bytes do not have the SHA-256 digest the caller expected.
    DigestMismatch { api: String, cid: String, expected: String, actual: String },
    /// A CID given by the caller is not a valid CID.
    InvalidCid { cid: String, detail: String },
    /// An MFS path given by the caller is not an absolute path to a file.
    InvalidPath { path: String, detail: String },
    /// The MFS path already holds other content than the CID to keep there.
    MfsConflict { api: String, path: String, wanted: String, found: String },
    /// The node answered, but reported an error inside its answer (a streamed command).
    Reported { api: String, op: String, message: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable { api, op, attempts, detail } => {
                write!(f, "ipfs api {api}: {op}: cannot reach the node ({attempts} attempts): {detail}")
            }
            Error::Timeout { api, op, after } => write!(
                f,
                "ipfs api {api}: {op}: no complete answer within {after:?} (content not available from any connected peer, or the node is stuck)"
            ),
            Error::Api { api, op, status, message } => write!(f, "ipfs api {api}: {op}: http status {status}: {message}"),
            Error::BadReply { api, op, detail } => write!(f, "ipfs api {api}: {op}: unexpected answer: {detail}"),
            Error::TooLarge { api, op, max_bytes } => write!(f, "ipfs api {api}: {op}: content is larger than the limit of {max_bytes} bytes"),
            Error::CidMismatch { api, local, node } => write!(
                f,
                "ipfs api {api}: add: the node stored the bytes as {node} but they hash to {local} with the same parameters"
            ),
            Error::DigestMismatch { api, cid, expected, actual } => write!(
                f,
                "ipfs api {api}: cat {cid}: content has sha-256 {actual}, expected {expected}: refusing to use it"
            ),
            Error::InvalidCid { cid, detail } => write!(f, "invalid cid {cid:?}: {detail}"),
            Error::InvalidPath { path, detail } => write!(f, "invalid mfs path {path:?}: {detail}"),
            Error::MfsConflict { api, path, wanted, found } => {
                write!(f, "ipfs api {api}: keeping {wanted} at mfs path {path}: the path already holds {found}; refusing to replace it")
            }
            Error::Reported { api, op, message } => write!(f, "ipfs api {api}: {op}: the node reported an error: {message}"),
        }
    }
}

impl Error {
    /// True if the node did not answer, or not in time: a later attempt may succeed.
    /// A node's own error, a refused or malformed reply and a digest or CID mismatch
    /// would only repeat.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. })
    }
}

impl std::error::Error for Error {}

/// The node's identity, from `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Peer id (`12D3Koo...` or `Qm...`).
    pub id: String,
    /// Multiaddresses the node listens on, with `/p2p/<id>`.
    pub addresses: Vec<String>,
    /// Implementation and version, e.g. `kubo/0.29.0/` or `js-ipfs/0.18.1`.
    pub agent_version: String,
}

/// A client for one node's RPC API. Cheap to clone; shares its connection pool.
#[derive(Clone)]
pub struct Client {
    api: String,
    agent: ureq::Agent,
    config: ClientConfig,
}

/// What a request carries, if anything.
enum Body<'a> {
    Empty,
    Multipart { boundary: &'a str, data: &'a [u8] },
}

/// How one attempt ended, before the retry decision.
enum Attempt {
    Done(Vec<u8>),
    Transient(String),
    Final(Error),
}

impl Client {
    /// A client for the API at `api_url` (`http://127.0.0.1:5001`, with or without a
    /// trailing `/` or `/api/v0`) with the default time limits.
    pub fn new(api_url: &str) -> Client {
        Client::with_config(api_url, ClientConfig::default())
    }

    /// A client with explicit time limits and retries.
    pub fn with_config(api_url: &str, config: ClientConfig) -> Client {
        let api = api_url.trim_end_matches('/').trim_end_matches("/api/v0").trim_end_matches('/').to_string();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Error statuses carry the node's message in the body: read it ourselves.
            .http_status_as_error(false)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_global(Some(config.timeout))
            // The RPC API never redirects; following one could leave loopback.
            .max_redirects(0)
            .build()
            .into();
        Client { api, agent, config }
    }

    /// The API's base URL, as used in error messages.
    pub fn api_url(&self) -> &str {
        &self.api
    }

    /// Adds `bytes` as a file, pinned, and returns its CID (CIDv1, base32), after checking
    /// that it equals the CID computed locally for the same bytes and parameters.
    pub fn add(&self, bytes: &[u8]) -> Result<String, Error> {
        self.add_with_chunk_size(bytes, CHUNK_SIZE)
    }

    /// `add` with another chunk size (Kubo's `--chunker=size-N`), for tests of the tree
    /// layout with small files; models always use `add`.
    pub fn add_with_chunk_size(&self, bytes: &[u8], chunk_size: usize) -> Result<String, Error> {
        let op = format!("add ({} bytes)", bytes.len());
        if chunk_size == 0 {
            return Err(self.bad(&op, "chunk size must be positive".into()));
        }
        let local = cid_with_layout(bytes, chunk_size, MAX_LINKS).to_string();
        let boundary = multipart_boundary(bytes);
        let chunker = format!("size-{chunk_size}");
        let query = [
            ("cid-version", "1"),
            ("raw-leaves", "true"),
            ("chunker", chunker.as_str()),
            ("hash", "sha2-256"),
            ("trickle", "false"),
            ("pin", "true"),
            // js-ipfs answers in base58btc otherwise; Kubo already uses base32 for CIDv1.
            ("cid-base", "base32"),
        ];
        let reply = self.call(&op, "add", &query, Body::Multipart { boundary: &boundary, data: bytes }, 1 << 20)?;
        let node_cid = parse_add_reply(&String::from_utf8_lossy(&reply), bytes.len() as u64).map_err(|e| self.bad(&op, e))?;
        let node_cid = normalize(&node_cid).map_err(|e| self.bad(&op, e.to_string()))?;
        if node_cid != local {
            return Err(Error::CidMismatch { api: self.api.clone(), local, node: node_cid });
        }
        Ok(node_cid)
    }

    /// The bytes of the file `cid`, at most `max_bytes` of them (a larger file is an
    /// error, read no further than the limit).
    pub fn cat(&self, cid: &str, max_bytes: u64) -> Result<Vec<u8>, Error> {
        let cid = normalize(cid)?;
        let op = format!("cat {cid}");
        self.call(&op, "cat", &[("arg", cid.as_str())], Body::Empty, max_bytes)
    }

    /// `cat`, then checks the bytes' SHA-256 against `expected_sha256` (as the chain
    /// records it) before handing them out.
    pub fn fetch_verified(&self, cid: &str, expected_sha256: &[u8; 32], max_bytes: u64) -> Result<Vec<u8>, Error> {
        let bytes = self.cat(cid, max_bytes)?;
        let actual: [u8; 32] = Sha256::digest(&bytes).into();
        if &actual != expected_sha256 {
            return Err(Error::DigestMismatch {
                api: self.api.clone(),
                cid: normalize(cid)?,
                expected: hex(expected_sha256),
                actual: hex(&actual),
            });
        }
        Ok(bytes)
    }

    /// The bytes of a file of one chunk (at most [`CHUNK_SIZE`] bytes, such as a model spec)
    /// named by its SHA-256 alone: such a file is one raw block, so its CID follows from
    /// the digest (`add` writes it so); the bytes are checked against the digest.
    pub fn fetch_by_sha256(&self, sha256: &[u8; 32], max_bytes: u64) -> Result<Vec<u8>, Error> {
        let cid = crate::cid::one_chunk_cid(sha256);
        self.fetch_verified(&cid, sha256, max_bytes.min(CHUNK_SIZE as u64))
    }

    /// Pins `cid` recursively (fetching it from peers if needed, within the time limit).
    pub fn pin_add(&self, cid: &str) -> Result<(), Error> {
        let cid = normalize(cid)?;
        let op = format!("pin/add {cid}");
        let reply = self.call(&op, "pin/add", &[("arg", cid.as_str()), ("recursive", "true")], Body::Empty, 1 << 20)?;
        self.expect_pinned(&op, &reply, &cid)
    }

    /// Removes the pin of `cid`, so that the node's garbage collection ([`Client::repo_gc`])
    /// may remove its blocks. Returns `false` when there was no pin to remove: a CID that
    /// is not pinned, or only pinned indirectly (as part of another pin, which keeps it),
    /// is what the caller wants already, not an error. Kubo says "not pinned or pinned
    /// indirectly" for both; js-ipfs "CID is not pinned" or "CID is pinned indirectly
    /// under ...". Pins are not counted: this removes the pin whoever made it, which is
    /// why the aggregator keeps what it needs in MFS ([`Client::mfs_keep`]) rather than
    /// as pins on a node it may share.
    pub fn pin_rm(&self, cid: &str) -> Result<bool, Error> {
        let cid = normalize(cid)?;
        let op = format!("pin/rm {cid}");
        match self.call(&op, "pin/rm", &[("arg", cid.as_str()), ("recursive", "true")], Body::Empty, 1 << 20) {
            Ok(reply) => self.expect_pinned(&op, &reply, &cid).map(|()| true),
            Err(Error::Api { message, .. }) if is_not_pinned(&message) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The CIDs this node pins recursively (what `add` and `pin_add` pin), as CIDv1 base32.
    pub fn pins(&self) -> Result<Vec<String>, Error> {
        let op = "pin/ls".to_string();
        let value = self.call_json(&op, "pin/ls", &[("type", "recursive")])?;
        // Kubo and js-ipfs: {"Keys": {"<cid>": {"Type": "recursive"}, ...}}. No `cid-base`:
        // js-ipfs refuses to write its CIDv0 pins (`Qm...`) in base32; they are normalised here.
        let keys = value
            .get("Keys")
            .and_then(|k| k.as_object())
            .ok_or_else(|| self.bad(&op, format!("no Keys in {}", truncate(&value.to_string()))))?;
        keys.keys().map(|cid| normalize(cid).map_err(|e| self.bad(&op, e.to_string()))).collect()
    }

    /// Garbage-collects the node's repository: every block that is neither pinned nor
    /// reachable from the node's MFS (files API) is deleted. Returns how many blocks were
    /// removed (Kubo and js-ipfs name each; neither says how many bytes). The node may
    /// have removed some blocks before an error it reports.
    pub fn repo_gc(&self) -> Result<u64, Error> {
        let op = "repo/gc".to_string();
        // Errors as lines of the answer: without `stream-errors`, Kubo reports a failed
        // sweep in an HTTP trailer after a 200, which this client cannot see.
        let reply = self.call(&op, "repo/gc", &[("stream-errors", "true")], Body::Empty, GC_REPLY_LIMIT)?;
        match parse_gc_reply(&String::from_utf8_lossy(&reply)) {
            Ok((removed, None)) => Ok(removed),
            Ok((removed, Some(message))) => {
                Err(Error::Reported { api: self.api.clone(), op, message: format!("{message} (after removing {removed} blocks)") })
            }
            Err(detail) => Err(self.bad(&op, detail)),
        }
    }

    /// Keeps `cid` in the node's MFS (files API) at `path`, e.g.
    /// `/fl-aggregator/round-3/learner-2`: `files/mkdir` of the folder (with parents), then
    /// `files/cp /ipfs/CID PATH`. What MFS references survives garbage collection on Kubo
    /// and js-ipfs alike, whoever pins or unpins the same CID, so it is how a node shared
    /// with others keeps content for itself.
    ///
    /// Idempotent: a `path` that already holds `cid` is fine (checked with `files/stat`);
    /// one that holds anything else is `Error::MfsConflict`, never overwritten. Kubo's
    /// `files/cp` links the root without fetching the rest of the DAG, and garbage
    /// collection keeps only the MFS blocks the node has: keep content that is on this
    /// node already (just added, or just fetched with `cat`).
    pub fn mfs_keep(&self, cid: &str, path: &str) -> Result<(), Error> {
        let cid = normalize(cid)?;
        let parent = mfs_parent(path)?;
        match self.mfs_cid(path)? {
            Some(found) if found == cid => return Ok(()),
            Some(found) => return Err(Error::MfsConflict { api: self.api.clone(), path: path.to_string(), wanted: cid, found }),
            None => {}
        }
        if parent != "/" {
            let op = format!("files/mkdir {parent}");
            self.call(&op, "files/mkdir", &[("arg", parent), ("parents", "true")], Body::Empty, 1 << 20)?;
        }
        let source = format!("/ipfs/{cid}");
        let op = format!("files/cp {source} {path}");
        match self.call(&op, "files/cp", &[("arg", source.as_str()), ("arg", path)], Body::Empty, 1 << 20) {
            Ok(_) => Ok(()),
            // Another process may have kept the same CID there in the meantime.
            Err(error) => match self.mfs_cid(path) {
                Ok(Some(found)) if found == cid => Ok(()),
                _ => Err(error),
            },
        }
    }

    /// The CID at MFS `path`, or `None` if nothing is there.
    fn mfs_cid(&self, path: &str) -> Result<Option<String>, Error> {
        let op = format!("files/stat {path}");
        let value = match self.call_json(&op, "files/stat", &[("arg", path)]) {
            Ok(value) => value,
            // Kubo: "file does not exist"; js-ipfs: "PATH does not exist".
            Err(Error::Api { message, .. }) if message.contains("does not exist") => return Ok(None),
            Err(error) => return Err(error),
        };
        let hash = value
            .get("Hash")
            .and_then(|h| h.as_str())
            .ok_or_else(|| self.bad(&op, format!("no Hash in {}", truncate(&value.to_string()))))?;
        normalize(hash).map(Some).map_err(|e| self.bad(&op, e.to_string()))
    }

    /// The node's peer id, addresses and agent version.
    pub fn id(&self) -> Result<PeerInfo, Error> {
        let op = "id".to_string();
        let value = self.call_json(&op, "id", &[])?;
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let id = text("ID").ok_or_else(|| self.bad(&op, "no ID".into()))?;
        let addresses = match value.get("Addresses") {
            Some(serde_json::Value::Array(items)) => items.iter().filter_map(|a| a.as_str().map(str::to_string)).collect(),
            // Kubo answers null when the node listens nowhere.
            _ => Vec::new(),
        };
        Ok(PeerInfo { id, addresses, agent_version: text("AgentVersion").unwrap_or_default() })
    }

    /// The node's version string (`0.29.0` for Kubo, `0.18.1` for js-ipfs).
    pub fn version(&self) -> Result<String, Error> {
        let op = "version".to_string();
        let value = self.call_json(&op, "version", &[])?;
        value.get("Version").and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| self.bad(&op, format!("no Version in {value}")))
    }

    /// Connects to a peer (`/ip4/.../tcp/.../p2p/<id>`); the private network's key must match.
    pub fn swarm_connect(&self, multiaddr: &str) -> Result<(), Error> {
        let op = format!("swarm/connect {multiaddr}");
        let value = self.call_json(&op, "swarm/connect", &[("arg", multiaddr)])?;
        // Kubo: {"Strings": ["connect <id> success"]}; js-ipfs: the same shape.
        match value.get("Strings").and_then(|s| s.as_array()) {
            Some(lines) if lines.iter().any(|l| l.as_str().is_some_and(|l| l.contains("success"))) => Ok(()),
            _ => Err(self.bad(&op, format!("no success in {}", truncate(&value.to_string())))),
        }
    }

    fn expect_pinned(&self, op: &str, reply: &[u8], cid: &str) -> Result<(), Error> {
        let value: serde_json::Value =
            serde_json::from_slice(reply).map_err(|e| self.bad(op, format!("{e} in {:?}", truncate(&String::from_utf8_lossy(reply)))))?;
        let pins = value.get("Pins").and_then(|p| p.as_array()).ok_or_else(|| self.bad(op, format!("no Pins in {value}")))?;
        // js-ipfs names the pins in base58btc, Kubo in base32: compare normalised.
        if pins.iter().filter_map(|p| p.as_str()).any(|p| normalize(p).is_ok_and(|p| p == cid)) {
            Ok(())
        } else {
            Err(self.bad(op, format!("{cid} not among the Pins in {}", truncate(&value.to_string()))))
        }
    }

    fn call_json(&self, op: &str, path: &str, query: &[(&str, &str)]) -> Result<serde_json::Value, Error> {
        let reply = self.call(op, path, query, Body::Empty, 1 << 20)?;
        serde_json::from_slice(&reply).map_err(|e| self.bad(op, format!("{e} in {:?}", truncate(&String::from_utf8_lossy(&reply)))))
    }

    fn bad(&self, op: &str, detail: String) -> Error {
        Error::BadReply { api: self.api.clone(), op: op.to_string(), detail }
    }

    /// One RPC call with bounded retries of transient failures; returns the answer's body.
    fn call(&self, op: &str, path: &str, query: &[(&str, &str)], body: Body, max_bytes: u64) -> Result<Vec<u8>, Error> {
        // Bounded by the number of attempts, so the pauses need no cap of their own.
        let mut backoff = Backoff::new(self.config.first_backoff, Duration::MAX);
        let attempts = self.config.attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.attempt(op, path, query, &body, max_bytes) {
                Attempt::Done(bytes) => return Ok(bytes),
                Attempt::Final(error) => return Err(error),
                Attempt::Transient(detail) => last = detail,
            }
            if attempt < attempts {
                if let Some(tell) = self.config.on_retry {
                    tell(&format!(
                        "ipfs api {}: {op}: attempt {attempt} of {attempts} failed ({last}); retrying in {:?}",
                        self.api,
                        backoff.next_pause()
                    ));
                }
                backoff.wait();
            }
        }
        Err(Error::Unreachable { api: self.api.clone(), op: op.to_string(), attempts, detail: last })
    }

    fn attempt(&self, op: &str, path: &str, query: &[(&str, &str)], body: &Body, max_bytes: u64) -> Attempt {
        let mut request = self.agent.post(format!("{}/api/v0/{path}", self.api));
        for (key, value) in query {
            request = request.query(*key, *value);
        }
        let sent = match body {
            Body::Empty => request.send_empty(),
            Body::Multipart { boundary, data } => {
                let mut payload = Vec::with_capacity(data.len() + 256);
                payload.extend_from_slice(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"file\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                payload.extend_from_slice(data);
                payload.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                request.content_type(format!("multipart/form-data; boundary={boundary}")).send(&payload[..])
            }
        };
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => return self.classify(op, error),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return match response.body_mut().with_config().limit(max_bytes).read_to_vec() {
                Ok(bytes) => Attempt::Done(bytes),
                Err(ureq::Error::BodyExceedsLimit(_)) => {
                    Attempt::Final(Error::TooLarge { api: self.api.clone(), op: op.to_string(), max_bytes })
                }
                Err(error) => self.classify(op, error),
            };
        }
        // Kubo and js-ipfs send {"Message": "...", "Code": 0, "Type": "error"}.
        let text = response.body_mut().with_config().limit(64 * 1024).lossy_utf8(true).read_to_string().unwrap_or_default();
        let structured: Option<String> = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("Message").and_then(|m| m.as_str()).map(str::to_string));
        let message = structured.clone().unwrap_or_else(|| truncate(text.trim()).to_string());
        // The node's own error (a 500 with a message: "not pinned", "invalid path") is a
        // final answer; a 5xx without one comes from a proxy or a node that is overloaded
        // or starting, and may pass.
        if status >= 500 && (structured.is_none() || matches!(status, 502..=504)) {
            return Attempt::Transient(format!("http status {status}: {message}"));
        }
        Attempt::Final(Error::Api { api: self.api.clone(), op: op.to_string(), status, message })
    }

    fn classify(&self, op: &str, error: ureq::Error) -> Attempt {
        use std::io::ErrorKind::*;
        match error {
            ureq::Error::Timeout(ureq::Timeout::Connect) => Attempt::Transient("connect timed out".into()),
            ureq::Error::Timeout(_) => {
                Attempt::Final(Error::Timeout { api: self.api.clone(), op: op.to_string(), after: self.config.timeout })
            }
            ureq::Error::Io(e) if e.kind() == TimedOut => {
                Attempt::Final(Error::Timeout { api: self.api.clone(), op: op.to_string(), after: self.config.timeout })
            }
            ureq::Error::Io(e)
                if matches!(
                    e.kind(),
                    ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
                ) =>
            {
                Attempt::Transient(e.to_string())
            }
            ureq::Error::ConnectionFailed => Attempt::Transient("connection failed".into()),
            other => {
                Attempt::Final(Error::Unreachable { api: self.api.clone(), op: op.to_string(), attempts: 1, detail: other.to_string() })
            }
        }
    }
}

/// The file's CID from an `add` answer: one JSON object per line (Kubo streams progress
/// lines first when asked to), the file's own being the last with a `Hash`.
fn parse_add_reply(text: &str, file_len: u64) -> Result<String, String> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e} in {:?}", truncate(line)))?;
        if let Some(hash) = value.get("Hash") {
            let hash = hash.as_str().ok_or_else(|| format!("Hash is not a string in {:?}", truncate(line)))?;
            // Size is a number in js-ipfs and a string in Kubo: the size of the whole DAG,
            // so never less than the file.
            match value.get("Size").and_then(json_u64) {
                Some(size) if size >= file_len => {}
                _ => return Err(format!("missing or implausible Size in {:?}", truncate(line))),
            }
            found = Some(hash.to_string());
        }
    }
    found.ok_or_else(|| format!("no Hash in {:?}", truncate(text)))
}

/// The most an answer of `repo/gc` may hold: one line of about 90 bytes per removed
/// block, so some 700,000 blocks (a repository of 170 GiB in 256 KiB blocks).
const GC_REPLY_LIMIT: u64 = 64 << 20;

/// True for the node's answer to `pin/rm` of a CID it does not pin itself (see
/// [`Client::pin_rm`]).
fn is_not_pinned(message: &str) -> bool {
    message.contains("not pinned") || message.contains("pinned indirectly")
}

/// The blocks a `repo/gc` answer names and the first error it reports: one JSON object
/// per line, `{"Key": {"/": "<cid>"}}` per removed block, `{"Error": "..."}` for a failure.
fn parse_gc_reply(text: &str) -> Result<(u64, Option<String>), String> {
    let (mut removed, mut error) = (0, None);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e} in {:?}", truncate(line)))?;
        if let Some(message) = value.get("Error").and_then(|e| e.as_str()).filter(|m| !m.is_empty()) {
            error.get_or_insert_with(|| message.to_string());
        } else if value.get("Key").and_then(|k| k.get("/")).and_then(|c| c.as_str()).is_some_and(|c| !c.is_empty()) {
            removed += 1;
        } else {
            return Err(format!("neither Key nor Error in {:?}", truncate(line)));
        }
    }
    Ok((removed, error))
}

/// The folder of MFS `path`, after checking that the path names a file below the root:
/// absolute, without empty, `.` or `..` parts, and without a trailing `/`.
fn mfs_parent(path: &str) -> Result<&str, Error> {
    let invalid = |detail: &str| Error::InvalidPath { path: truncate(path).to_string(), detail: detail.to_string() };
    let Some(relative) = path.strip_prefix('/') else { return Err(invalid("must start with /")) };
    if relative.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(invalid("empty, . or .. parts are not allowed (nor a trailing /)"));
    }
    if path.chars().any(char::is_control) {
        return Err(invalid("control characters are not allowed"));
    }
    Ok(match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    })
}

/// Any CID form a node or a caller may use, as CIDv1 base32.
fn normalize(cid: &str) -> Result<String, Error> {
    cid.trim().parse::<Cid>().map(|c| c.to_string()).map_err(|detail| Error::InvalidCid { cid: truncate(cid).to_string(), detail })
}

/// A multipart boundary that does not occur in `data` (RFC 2046 requires it).
fn multipart_boundary(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    for n in 0u32.. {
        let boundary = format!("fl-ipfs-{}-{n}", hex(&digest[..12]));
        if !data.windows(boundary.len()).any(|w| w == boundary.as_bytes()) {
            return boundary;
        }
    }
    unreachable!("some boundary is absent from any finite input")
}

/// A JSON number, or a string of digits (Kubo writes sizes as strings).
fn json_u64(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// At most 200 characters of a node's answer, for error messages.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_is_normalised() {
        for url in ["http://127.0.0.1:5001", "http://127.0.0.1:5001/", "http://127.0.0.1:5001/api/v0", "http://127.0.0.1:5001/api/v0/"] {
            assert_eq!(Client::new(url).api_url(), "http://127.0.0.1:5001");
        }
    }

    #[test]
    fn sizes_come_as_numbers_or_strings() {
        assert_eq!(json_u64(&serde_json::json!(2600509)), Some(2_600_509));
        assert_eq!(json_u64(&serde_json::json!("2600509")), Some(2_600_509));
        assert_eq!(json_u64(&serde_json::json!("-1")), None);
        assert_eq!(json_u64(&serde_json::json!(null)), None);
    }

    #[test]
    fn add_replies_of_kubo_and_js_ipfs() {
        let v1 = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
        // Kubo: Size as a string, CIDv1 in base32, progress lines before (with progress=true).
        let kubo = format!("{{\"Name\":\"file\",\"Bytes\":262144}}\n{{\"Name\":\"file\",\"Hash\":\"{v1}\",\"Size\":\"2480123\"}}\n");
        assert_eq!(parse_add_reply(&kubo, 2_479_144).unwrap(), v1);
        // js-ipfs without cid-base: Size as a number, the same CIDv1 in base58btc (converted
        // with multiformats' `CID.toString(base58btc)`), equal once normalised.
        let js = "{\"Name\":\"file\",\"Hash\":\"zdj7Wic6KcJAfWz1c9o4M6kq9Lwd5BfbxkVafnrojaaGiSFxM\",\"Size\":2600509,\"Mode\":\"0644\"}";
        assert_eq!(normalize(&parse_add_reply(js, 2_600_000).unwrap()).unwrap(), v1);
        assert!(parse_add_reply(js, 2_600_510).unwrap_err().contains("implausible Size"));
        assert!(parse_add_reply("{\"Name\":\"file\"}", 1).unwrap_err().contains("no Hash"));
        assert!(parse_add_reply("<html>", 1).is_err());
    }

    /// A one-connection-per-request HTTP server on loopback that answers each request with
    /// the next status and body of `replies` and records each request's first line
    /// (`POST /api/v0/files/stat?arg=... HTTP/1.1`).
    fn scripted_server(replies: Vec<(u16, &'static str)>) -> (String, Requests) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Requests::default();
        let seen = requests.clone();
        std::thread::spawn(move || {
            for (status, body) in replies {
                let Ok((mut stream, _)) = listener.accept() else { return };
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]);
                seen.0.lock().unwrap().push(text.lines().next().unwrap_or("").to_string());
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        (url, requests)
    }

    /// The first lines of the requests a scripted server received.
    #[derive(Clone, Default)]
    struct Requests(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Requests {
        fn count(&self) -> usize {
            self.0.lock().unwrap().len()
        }

        /// The API paths requested (`files/stat`, ...), in order.
        fn paths(&self) -> Vec<String> {
            let lines = self.0.lock().unwrap();
            lines.iter().map(|l| l.split(['?', ' ']).nth(1).unwrap_or("").trim_start_matches("/api/v0/").to_string()).collect()
        }
    }

    fn fast() -> ClientConfig {
        ClientConfig {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            attempts: 3,
            first_backoff: Duration::from_millis(10),
            on_retry: None,
        }
    }

    #[test]
    fn transient_5xx_is_retried_then_succeeds() {
        let (url, requests) = scripted_server(vec![(503, "busy"), (502, ""), (200, "{\"Version\":\"0.29.0\"}")]);
        assert_eq!(Client::with_config(&url, fast()).version().unwrap(), "0.29.0");
        assert_eq!(requests.count(), 3);
    }

    #[test]
    fn each_retry_is_told_and_the_last_failure_is_not() {
        static TOLD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let (url, _requests) = scripted_server(vec![(503, "busy"), (503, "busy"), (503, "busy")]);
        let config = ClientConfig { on_retry: Some(|line| TOLD.lock().unwrap().push(line.to_string())), ..fast() };
        Client::with_config(&url, config).version().unwrap_err();
        let told = TOLD.lock().unwrap().clone();
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told[0].starts_with(&format!("ipfs api {url}: version: attempt 1 of 3 failed (http status 503")), "{told:?}");
        assert!(told[1].contains("attempt 2 of 3") && told[1].ends_with("retrying in 20ms"), "{told:?}");
    }

    #[test]
    fn retries_are_bounded() {
        let (url, requests) = scripted_server(vec![(503, ""), (503, ""), (503, ""), (200, "{\"Version\":\"x\"}")]);
        let err = Client::with_config(&url, fast()).version().unwrap_err();
        assert!(matches!(err, Error::Unreachable { attempts: 3, .. }), "{err}");
        assert!(err.to_string().contains("503") && err.to_string().contains(&url), "{err}");
        assert_eq!(requests.count(), 3);
    }

    #[test]
    fn client_errors_and_node_messages_are_not_retried() {
        let (url, requests) = scripted_server(vec![
            (400, "{\"Message\":\"invalid path\",\"Code\":0,\"Type\":\"error\"}"),
            (500, "{\"Message\":\"pin: context deadline exceeded\",\"Code\":0,\"Type\":\"error\"}"),
        ]);
        let client = Client::with_config(&url, fast());
        let cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
        let err = client.cat(cid, 10).unwrap_err();
        assert!(matches!(err, Error::Api { status: 400, .. }), "{err}");
        assert!(err.to_string().contains("invalid path") && err.to_string().contains(cid), "{err}");
        let err = client.pin_add(cid).unwrap_err();
        assert!(matches!(err, Error::Api { status: 500, .. }), "{err}");
        assert_eq!(requests.count(), 2);
    }

    #[test]
    fn boundary_avoids_the_data() {
        // Data made of the boundary its own prefix would suggest, repeated: whatever the
        // boundary, it must not occur in the data.
        let seed = multipart_boundary(b"x");
        let data = seed.repeat(3).into_bytes();
        let boundary = multipart_boundary(&data);
        assert!(!data.windows(boundary.len()).any(|w| w == boundary.as_bytes()));
    }

    #[test]
    fn invalid_cids_are_refused_before_any_request() {
        // Port 9 (discard) is never contacted: the CID is checked first.
        let client = Client::new("http://127.0.0.1:9");
        let err = client.cat("not-a-cid", 10).unwrap_err();
        assert!(matches!(err, Error::InvalidCid { .. }), "{err}");
        assert!(err.to_string().contains("not-a-cid"), "{err}");
    }

    const CID: &str = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";

    #[test]
    fn pin_rm_of_what_is_not_pinned_is_not_an_error() {
        // The answers of Kubo and of js-ipfs (ipfs-core's pin/rm-all.js, wrapped by its
        // HTTP server) for a CID without a pin of its own, then a real failure.
        let (url, requests) = scripted_server(vec![
            (200, "{\"Pins\":[\"zdj7Wic6KcJAfWz1c9o4M6kq9Lwd5BfbxkVafnrojaaGiSFxM\"]}"),
            (500, "{\"Message\":\"not pinned or pinned indirectly\",\"Code\":0,\"Type\":\"error\"}"),
            (500, "{\"Message\":\"Failed to remove pin: bafy... is not pinned\",\"Code\":0,\"Type\":\"error\"}"),
            (500, "{\"Message\":\"bafy... is pinned indirectly under bafy...\",\"Code\":0,\"Type\":\"error\"}"),
            (500, "{\"Message\":\"repo is locked\",\"Code\":0,\"Type\":\"error\"}"),
        ]);
        let client = Client::with_config(&url, fast());
        assert!(client.pin_rm(CID).unwrap(), "a pin was removed");
        for _ in 0..3 {
            assert!(!client.pin_rm(CID).unwrap(), "nothing to remove");
        }
        let err = client.pin_rm(CID).unwrap_err();
        assert!(matches!(err, Error::Api { status: 500, .. }) && err.to_string().contains("repo is locked"), "{err}");
        assert_eq!(requests.count(), 5, "no retry of a node's own error");
        assert!(requests.paths().iter().all(|p| p == "pin/rm"), "{:?}", requests.paths());
    }

    #[test]
    fn gc_replies_of_kubo_and_js_ipfs() {
        // Kubo (with stream-errors): {"Key":{"/":cid}} per block; js-ipfs adds nothing else.
        let kubo = format!("{{\"Key\":{{\"/\":\"{CID}\"}}}}\n{{\"Key\":{{\"/\":\"bafkreia\"}},\"Error\":\"\"}}\n");
        assert_eq!(parse_gc_reply(&kubo).unwrap(), (2, None));
        assert_eq!(parse_gc_reply("").unwrap(), (0, None), "nothing to collect");
        let failed = format!("{{\"Key\":{{\"/\":\"{CID}\"}}}}\n{{\"Error\":\"could not remove x\"}}\n{{\"Error\":\"later\"}}\n");
        assert_eq!(parse_gc_reply(&failed).unwrap(), (1, Some("could not remove x".into())));
        assert!(parse_gc_reply("{\"Ref\":\"x\"}").unwrap_err().contains("neither Key nor Error"));
        assert!(parse_gc_reply("<html>").is_err());

        let (url, _) = scripted_server(vec![(200, "{\"Key\":{\"/\":\"bafkreia\"}}\n{\"Error\":\"disk on fire\"}\n")]);
        let err = Client::with_config(&url, fast()).repo_gc().unwrap_err();
        assert!(matches!(err, Error::Reported { .. }), "{err}");
        assert!(err.to_string().contains("disk on fire (after removing 1 blocks)") && err.to_string().contains(&url), "{err}");
    }

    #[test]
    fn mfs_paths_are_checked_before_any_request() {
        assert_eq!(mfs_parent("/fl-aggregator/round-3/learner-2").unwrap(), "/fl-aggregator/round-3");
        assert_eq!(mfs_parent("/model").unwrap(), "/");
        for (path, says) in [
            ("fl/x", "must start with /"),
            ("/", "empty"),
            ("/fl/", "trailing /"),
            ("/fl//x", "empty"),
            ("/fl/../x", ".."),
            ("/fl/./x", "."),
            ("/fl/x\n", "control characters"),
        ] {
            let err = Client::new("http://127.0.0.1:9").mfs_keep(CID, path).unwrap_err();
            assert!(matches!(err, Error::InvalidPath { .. }) && err.to_string().contains(says), "{path:?}: {err}");
        }
    }

    #[test]
    fn mfs_keep_copies_once_and_never_replaces_other_content() {
        let js_stat = "{\"Hash\":\"zdj7Wic6KcJAfWz1c9o4M6kq9Lwd5BfbxkVafnrojaaGiSFxM\",\"Type\":\"file\"}";
        let other = "{\"Hash\":\"bafkreia2yn2mkcxaavwdbvrwf6s4cehqrsbc7rfnhphq2buaq5pdb3kqoq\",\"Type\":\"file\"}";
        let (url, requests) = scripted_server(vec![
            // Absent (Kubo's words): mkdir, cp.
            (500, "{\"Message\":\"file does not exist\",\"Code\":0,\"Type\":\"error\"}"),
            (200, ""),
            (200, ""),
            // Already there (js-ipfs names it in base58btc): nothing more.
            (200, js_stat),
            // Something else there: refused, nothing more.
            (200, other),
            // At the top (no mkdir), absent in js-ipfs' words; cp fails because another keeper
            // got there first with the same CID.
            (500, "{\"Message\":\"/x does not exist\",\"Code\":0,\"Type\":\"error\"}"),
            (500, "{\"Message\":\"directory already has entry by that name\",\"Code\":0,\"Type\":\"error\"}"),
            (200, js_stat),
        ]);
        let client = Client::with_config(&url, fast());
        client.mfs_keep(CID, "/fl/round-1/x").unwrap();
        assert_eq!(requests.paths(), ["files/stat", "files/mkdir", "files/cp"]);
        client.mfs_keep(CID, "/fl/round-1/x").unwrap();
        assert_eq!(requests.count(), 4);
        let err = client.mfs_keep(CID, "/fl/round-1/x").unwrap_err();
        assert!(matches!(err, Error::MfsConflict { .. }), "{err}");
        assert!(
            err.to_string().contains("/fl/round-1/x") && err.to_string().contains("bafkreia2yn2m") && err.to_string().contains(CID),
            "{err}"
        );
        assert_eq!(requests.count(), 5);
        client.mfs_keep(CID, "/x").unwrap();
        assert_eq!(requests.paths()[5..], ["files/stat", "files/cp", "files/stat"], "no mkdir of the root");
    }
}
