//! A fault-injecting HTTP proxy on loopback, in front of the real S3-compatible test server:
//! each request is forwarded (one connection per request, `Connection: close`), or, with a
//! seeded probability, answered with a fault instead:
//! - `500 InternalError` or `503 SlowDown`, without forwarding;
//! - a reset: the connection closed with no answer, before forwarding (nothing happened) or
//!   after (the server did the work, the client never heard);
//! - a truncated answer: the server's head and half its body, then the connection closed;
//! - a slow answer: forwarded after a pause.
//!
//! It counts what it injected, by kind.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The kinds of fault, in the order of [`FaultProxy::injected`].
pub const KINDS: [&str; 6] = [
    "500",
    "503-slowdown",
    "reset-before",
    "reset-after",
    "truncated-body",
    "slow",
];

/// A running proxy; stops accepting on drop.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    requests: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`http://host:port`), faulting a request with probability
    /// `rate`, from the seed `seed`.
    pub fn start(upstream: &str, rate: f64, seed: u64) -> FaultProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// endpoint")
            .to_owned();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let rng = Arc::new(Mutex::new(seed | 1));
        {
            let (stop, counts, requests) = (stop.clone(), counts.clone(), requests.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let (upstream, counts, requests, rng) = (
                                upstream.clone(),
                                counts.clone(),
                                requests.clone(),
                                rng.clone(),
                            );
                            std::thread::spawn(move || {
                                let _ = serve(client, &upstream, rate, &rng, &counts, &requests);
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => break,
                    }
                }
            });
        }
        FaultProxy {
            endpoint,
            stop,
            counts,
            requests,
        }
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().unwrap().clone()
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// xorshift64*: the next number of a seeded sequence shared by all connections.
fn next(rng: &Mutex<u64>) -> u64 {
    let mut s = rng.lock().unwrap();
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Reads one HTTP message head (up to the blank line) and returns it with any body bytes read
/// past it.
fn read_head(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// The head with `Connection: close` in place of any connection header.
fn closing(head: &str) -> String {
    let mut out = String::new();
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    rate: f64,
    rng: &Mutex<u64>,
    counts: &Mutex<BTreeMap<&'static str, u64>>,
    requests: &AtomicU64,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let (head, mut body) = read_head(&mut client)?;
    let want = content_length(&head);
    while body.len() < want {
        let mut chunk = vec![0u8; (want - body.len()).min(1 << 16)];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let roll = next(rng);
    let fault = ((roll >> 11) as f64 / (1u64 << 53) as f64) < rate;
    let kind = fault.then(|| KINDS[(next(rng) % KINDS.len() as u64) as usize]);
    if let Some(k) = kind {
        *counts.lock().unwrap().entry(k).or_default() += 1;
    }
    let status = |client: &mut TcpStream, code: &str, s3code: &str| -> std::io::Result<()> {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3code}</Code><Message>injected</Message></Error>"
        );
        write!(
            client,
            "HTTP/1.1 {code}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )
    };
    match kind {
        Some("500") => return status(&mut client, "500 Internal Server Error", "InternalError"),
        Some("503-slowdown") => return status(&mut client, "503 Slow Down", "SlowDown"),
        Some("reset-before") => return client.shutdown(Shutdown::Both),
        Some("slow") => std::thread::sleep(Duration::from_millis(300)),
        _ => {}
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(closing(&head).as_bytes())?;
    server.write_all(&body)?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    match kind {
        Some("reset-after") => client.shutdown(Shutdown::Both),
        Some("truncated-body") => {
            let end = answer
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(answer.len(), |p| p + 4);
            let cut = end + (answer.len() - end) / 2;
            client.write_all(&answer[..cut])?;
            client.shutdown(Shutdown::Both)
        }
        _ => client.write_all(&answer),
    }
}
