//! A loopback TCP proxy that breaks links on purpose: put between a process and its chain
//! or IPFS endpoint, it can vanish (open connections are cut and new ones closed at once),
//! delay every reply, and cut one connection halfway through an upload or a download.
//! Everything it does to a connection is noted in [`Proxy::events`], so a failing test
//! says what the link went through.
//!
//! Blocking threads, no async runtime: one acceptor, two pumps per connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How long the acceptor sleeps between looks at a quiet listener.
const TICK: Duration = Duration::from_millis(10);

/// A running proxy on 127.0.0.1; stops (and cuts its connections) when dropped.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The port refuses connections and open ones were cut.
    down: bool,
    /// Held before the first bytes of each reply.
    delay: Duration,
    /// Each connection's bytes each way paced to at most this many per second (a slow link).
    rate: Option<u64>,
    /// One-shot: the next connection to send more than this many bytes upstream is cut there.
    cut_upload_after: Option<u64>,
    /// One-shot: the next connection to receive more than this many bytes is cut there.
    cut_download_after: Option<u64>,
    /// Open connections (both sockets), to cut them when the proxy goes down.
    open: Vec<(u64, TcpStream, TcpStream)>,
    next_id: u64,
    events: Vec<String>,
    /// Connections accepted so far.
    accepted: u64,
}

/// Which way bytes flow through a pump.
#[derive(Clone, Copy, PartialEq)]
enum Direction {
    /// From the client to the upstream endpoint (requests, uploads).
    Up,
    /// From the upstream endpoint to the client (replies, downloads).
    Down,
}

impl Proxy {
    /// Starts a proxy to `upstream_url` (`http://127.0.0.1:PORT`, any path ignored).
    pub fn start(upstream_url: &str) -> Result<Proxy> {
        let authority = upstream_url
            .strip_prefix("http://")
            .with_context(|| format!("proxy upstream {upstream_url:?}: expected http://HOST:PORT"))?
            .split('/')
            .next()
            .unwrap_or_default();
        let upstream: SocketAddr =
            authority.parse().with_context(|| format!("proxy upstream {upstream_url:?}: expected an IP and a port"))?;
        if !upstream.ip().is_loopback() {
            bail!("proxy upstream {upstream}: only loopback endpoints may be proxied");
        }
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy on loopback")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared { upstream, stop: AtomicBool::new(false), state: Mutex::new(State::default()) });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new().name(format!("proxy-{port}")).spawn(move || accept_loop(&shared, listener))?
        };
        Ok(Proxy { port, shared, acceptor: Some(acceptor) })
    }

    /// The proxy's URL, to give a process instead of the upstream's.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The endpoint vanishes: open connections are cut and new ones are closed as soon as
    /// they are accepted. (The listener stays: a port given back to the system while down
    /// may be taken by another socket, often an outgoing connection's, and never bound again.)
    pub fn go_down(&self) {
        let mut state = self.shared.lock();
        state.down = true;
        let open = std::mem::take(&mut state.open);
        state.events.push(format!("down: {} open connections cut, new ones closed", open.len()));
        drop(state);
        for (_, client, upstream) in open {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }

    /// The endpoint is back: connections are served again.
    pub fn come_up(&self) {
        let mut state = self.shared.lock();
        state.down = false;
        state.events.push("up: accepting again".into());
    }

    /// Paces every connection, each way, to at most `bytes_per_second` (`None`: as fast as
    /// loopback goes): a slow link, e.g. a board's cellular uplink.
    pub fn limit_rate(&self, bytes_per_second: Option<u64>) {
        let mut state = self.shared.lock();
        state.rate = bytes_per_second.map(|r| r.max(1));
        state.events.push(format!("rate limited to {bytes_per_second:?} bytes/s"));
    }

    /// Holds each reply `delay` before passing it on (zero: no delay).
    pub fn delay_replies(&self, delay: Duration) {
        let mut state = self.shared.lock();
        state.delay = delay;
        state.events.push(format!("replies delayed by {delay:?}"));
    }

    /// Cuts the next connection that sends more than `bytes` upstream, at that point.
    pub fn cut_next_upload_after(&self, bytes: u64) {
        self.shared.lock().cut_upload_after = Some(bytes);
    }

    /// Cuts the next connection that receives more than `bytes`, at that point.
    pub fn cut_next_download_after(&self, bytes: u64) {
        self.shared.lock().cut_download_after = Some(bytes);
    }

    /// What the proxy did, in order.
    pub fn events(&self) -> Vec<String> {
        self.shared.lock().events.clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.lock().accepted
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.go_down();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Accepts connections; while down, closes each at once (the client sees the connection
/// end before any reply, as when a node dies).
fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) if shared.lock().down => {
                let _ = client.shutdown(Shutdown::Both);
                shared.lock().events.push("down: a connection closed".into());
            }
            Ok((client, _)) => {
                if let Err(err) = serve(shared, client) {
                    shared.lock().events.push(format!("connection not served: {err:#}"));
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(err) => shared.lock().events.push(format!("accept failed: {err}")),
        }
    }
}

/// Connects `client` to the upstream endpoint and starts the two pumps.
fn serve(shared: &Arc<Shared>, client: TcpStream) -> Result<()> {
    client.set_nonblocking(false)?;
    let upstream = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))
        .with_context(|| format!("connecting to {}", shared.upstream))?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let id = {
        let mut state = shared.lock();
        state.accepted += 1;
        state.next_id += 1;
        let id = state.next_id;
        state.open.push((id, client.try_clone()?, upstream.try_clone()?));
        id
    };
    // Set by the up pump when a request goes out, cleared by the down pump once it held
    // the reply back: each reply is delayed once, not each of its chunks.
    let awaiting_reply = Arc::new(AtomicBool::new(false));
    for (from, to, direction) in [(client.try_clone()?, upstream.try_clone()?, Direction::Up), (upstream, client, Direction::Down)] {
        let (shared, awaiting_reply) = (shared.clone(), awaiting_reply.clone());
        std::thread::Builder::new()
            .name(format!("proxy-pump-{id}"))
            .spawn(move || pump(&shared, id, from, to, direction, &awaiting_reply))?;
    }
    Ok(())
}

/// Copies bytes one way until either side closes, applying the delay and the cut rules.
fn pump(shared: &Shared, id: u64, mut from: TcpStream, mut to: TcpStream, direction: Direction, awaiting_reply: &AtomicBool) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buffer[..n];
        let mut cut = false;
        {
            let mut state = shared.lock();
            if state.down {
                break;
            }
            let rule = match direction {
                Direction::Up => &mut state.cut_upload_after,
                Direction::Down => &mut state.cut_download_after,
            };
            if let Some(limit) = *rule {
                if total + n as u64 > limit {
                    *rule = None;
                    chunk = &chunk[..(limit - total) as usize];
                    cut = true;
                    let way = if direction == Direction::Up { "upload" } else { "download" };
                    state.events.push(format!("connection {id}: cut after {limit} bytes of its {way}"));
                }
            }
        }
        match direction {
            Direction::Up => awaiting_reply.store(true, Ordering::SeqCst),
            Direction::Down => {
                if awaiting_reply.swap(false, Ordering::SeqCst) {
                    let delay = shared.lock().delay;
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                }
            }
        }
        total += chunk.len() as u64;
        if to.write_all(chunk).is_err() || cut {
            break;
        }
        if let Some(rate) = shared.lock().rate {
            std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64));
        }
    }
    // Either side gone, or a cut: the connection ends both ways.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    shared.lock().open.retain(|(open, _, _)| *open != id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::time::Instant;

    /// A loopback server that answers each line with the same line, and `big\n` with
    /// 300,000 bytes.
    fn echo_server() -> Result<(String, JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let handle = std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().expect("clone");
                    for line in std::io::BufReader::new(stream).lines().map_while(|l| l.ok()) {
                        let reply = if line == "big" { vec![b'x'; 300_000] } else { format!("{line}\n").into_bytes() };
                        if writer.write_all(&reply).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok((url, handle))
    }

    fn connect(proxy: &Proxy) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", proxy.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(stream)
    }

    fn ask(stream: &mut TcpStream, line: &str) -> std::io::Result<String> {
        stream.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte)? == 1 {
            reply.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    #[test]
    fn passes_bytes_vanishes_comes_back_delays_and_cuts() -> Result<()> {
        let (upstream, _server) = echo_server()?;
        let proxy = Proxy::start(&upstream)?;
        let mut stream = connect(&proxy)?;
        assert_eq!(ask(&mut stream, "hello")?, "hello\n");

        // Down: the open connection ends, and a new one ends before any reply.
        proxy.go_down();
        std::thread::sleep(Duration::from_millis(100));
        assert!(ask(&mut stream, "still there?").map(|r| r.is_empty()).unwrap_or(true), "the open connection survived");
        let mut stream = connect(&proxy)?;
        assert!(ask(&mut stream, "anyone?").map(|r| r.is_empty()).unwrap_or(true), "a connection was served while down");

        // Up again.
        proxy.come_up();
        let mut stream = connect(&proxy)?;
        assert_eq!(ask(&mut stream, "again")?, "again\n");

        // Each reply held back once.
        proxy.delay_replies(Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(ask(&mut stream, "slow")?, "slow\n");
        assert!(started.elapsed() >= Duration::from_millis(300), "the reply was not delayed");
        proxy.delay_replies(Duration::ZERO);
        // A slow link: 100 KB at 500 KB/s takes at least 0.2 s.
        proxy.limit_rate(Some(500_000));
        let started = Instant::now();
        assert_eq!(ask(&mut stream, &"x".repeat(100_000))?.len(), 100_001);
        assert!(started.elapsed() >= Duration::from_millis(190), "not paced: {:?}", started.elapsed());
        proxy.limit_rate(None);

        // A download cut after 100,000 bytes (counted from the connection's start): the
        // client gets exactly those, then the end.
        proxy.cut_next_download_after(100_000);
        let mut stream = connect(&proxy)?;
        stream.write_all(b"big\n")?;
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        assert_eq!(received.len(), 100_000);
        // An upload cut after 10 bytes: the server sees only those (it answers nothing).
        proxy.cut_next_upload_after(10);
        let mut stream = connect(&proxy)?;
        assert!(ask(&mut stream, "0123456789abcdef")?.is_empty());
        let events = proxy.events();
        assert!(events.iter().any(|e| e.contains("cut after 100000 bytes of its download")), "{events:?}");
        assert!(events.iter().any(|e| e.contains("cut after 10 bytes of its upload")), "{events:?}");
        Ok(())
    }
}
