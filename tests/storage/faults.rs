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
//!
//! Given an IAM policy instead ([`FaultProxy::with_policy`]), it is a policy-enforcing gate: each
//! request is mapped to the S3 action and resource AWS would check (GetObject, PutObject,
//! DeleteObject, AbortMultipartUpload on `arn:aws:s3:::bucket/key`; ListBucket on
//! `arn:aws:s3:::bucket` with the condition key `s3:prefix`), evaluated against the policy's
//! statements (explicit Deny wins, then Allow; no match is an implicit deny), and answered
//! `403 AccessDenied` when denied, as S3 would. It records every decision.

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
    decisions: Arc<Mutex<Vec<Decision>>>,
}

/// What the policy gate decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: &'static str,
    pub resource: String,
    /// `s3:prefix` of a listing.
    pub prefix: Option<String>,
    pub allowed: bool,
}

impl FaultProxy {
    /// Proxies to `upstream` (`http://host:port`), faulting a request with probability
    /// `rate`, from the seed `seed`.
    pub fn start(upstream: &str, rate: f64, seed: u64) -> FaultProxy {
        Self::start_with(upstream, rate, seed, None)
    }

    /// Proxies to `upstream`, letting through only what the IAM policy document `policy`
    /// (JSON) allows; no faults.
    pub fn with_policy(upstream: &str, policy: &serde_json::Value) -> FaultProxy {
        Self::start_with(upstream, 0.0, 1, Some(Arc::new(Policy::parse(policy))))
    }

    fn start_with(upstream: &str, rate: f64, seed: u64, policy: Option<Arc<Policy>>) -> FaultProxy {
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
        let decisions = Arc::new(Mutex::new(Vec::new()));
        let rng = Arc::new(Mutex::new(seed | 1));
        {
            let (stop, counts, requests) = (stop.clone(), counts.clone(), requests.clone());
            let decisions = decisions.clone();
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
                            let gate = policy.clone().map(|p| (p, decisions.clone()));
                            std::thread::spawn(move || {
                                let _ =
                                    serve(client, &upstream, rate, &rng, &counts, &requests, gate);
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
            decisions,
        }
    }

    /// Every decision of the policy gate so far, in order.
    pub fn decisions(&self) -> Vec<Decision> {
        self.decisions.lock().unwrap().clone()
    }

    /// The denied requests so far.
    pub fn denied(&self) -> Vec<Decision> {
        self.decisions()
            .into_iter()
            .filter(|d| !d.allowed)
            .collect()
    }

    /// Forgets the decisions so far (between commands).
    pub fn clear(&self) {
        self.decisions.lock().unwrap().clear();
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

/// A policy and the log of its decisions.
type Gate = (Arc<Policy>, Arc<Mutex<Vec<Decision>>>);

fn serve(
    mut client: TcpStream,
    upstream: &str,
    rate: f64,
    rng: &Mutex<u64>,
    counts: &Mutex<BTreeMap<&'static str, u64>>,
    requests: &AtomicU64,
    gate: Option<Gate>,
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
    if let Some((policy, decisions)) = gate {
        let mut log = decisions.lock().unwrap();
        let checks = s3_checks(&head);
        let mut allowed = true;
        for (action, resource, prefix) in checks {
            let ok = policy.allows(action, &resource, prefix.as_deref());
            allowed &= ok;
            log.push(Decision {
                action,
                resource,
                prefix,
                allowed: ok,
            });
        }
        drop(log);
        if !allowed {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
            return write!(
                client,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            );
        }
    }
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

/// `%XX` decoding of a path or query component (`+` is literal in a path; in a query AWS's
/// clients encode a space as `%20`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The IAM checks S3 makes for the request whose head is `head` (path-style addressing):
/// `(action, resource ARN, s3:prefix)`.
fn s3_checks(head: &str) -> Vec<(&'static str, String, Option<String>)> {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let path = path.trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let (bucket, key) = (percent_decode(bucket), percent_decode(key));
    let object = format!("arn:aws:s3:::{bucket}/{key}");
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let copy_source = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("x-amz-copy-source")
            .then(|| percent_decode(v.trim().trim_start_matches('/')))
    });
    match (method, key.is_empty()) {
        ("GET" | "HEAD", true) if params.contains_key("location") => {
            vec![("s3:GetBucketLocation", bucket_arn, None)]
        }
        ("GET" | "HEAD", true) => vec![(
            "s3:ListBucket",
            bucket_arn,
            Some(params.get("prefix").cloned().unwrap_or_default()),
        )],
        ("GET" | "HEAD", false) => vec![("s3:GetObject", object, None)],
        ("PUT" | "POST", false) => {
            let mut v = vec![("s3:PutObject", object, None)];
            if let Some(src) = copy_source {
                v.push(("s3:GetObject", format!("arn:aws:s3:::{src}"), None));
            }
            v
        }
        ("DELETE", false) if params.contains_key("uploadId") => {
            vec![("s3:AbortMultipartUpload", object, None)]
        }
        ("DELETE", false) => vec![("s3:DeleteObject", object, None)],
        // Anything else (a bucket's creation or deletion, DeleteObjects, ACLs): no policy of
        // ClearFrame's grants it.
        _ => vec![(
            "s3:Unmapped",
            format!("{method} {bucket_arn}?{query}"),
            None,
        )],
    }
}

/// A policy document's statements, as far as ClearFrame's policies use them: `Effect`,
/// `Action` (`s3:Name` or `s3:*`), `Resource` (ARNs with `*` and `?` wildcards) and the
/// condition `StringLike` / `StringEquals` on `s3:prefix`.
#[derive(Debug)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Debug)]
struct Statement {
    allow: bool,
    actions: Vec<String>,
    resources: Vec<String>,
    /// `s3:prefix` patterns, each with whether it is a wildcard pattern (`StringLike`).
    prefixes: Option<Vec<(String, bool)>>,
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().expect("strings").to_owned())
            .collect(),
        other => panic!("expected a string or a list: {other}"),
    }
}

/// IAM's wildcard match: `*` any run of characters, `?` one character, case-sensitive.
fn wildcard(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Policy {
    pub fn parse(doc: &serde_json::Value) -> Policy {
        let statements = doc["Statement"]
            .as_array()
            .expect("a Statement list")
            .iter()
            .map(|st| {
                let mut prefixes = None;
                if let Some(cond) = st.get("Condition").and_then(|c| c.as_object()) {
                    for (op, keys) in cond {
                        let like = match op.as_str() {
                            "StringLike" => true,
                            "StringEquals" => false,
                            other => panic!("condition operator {other} is not evaluated here"),
                        };
                        for (key, values) in keys.as_object().expect("condition keys") {
                            assert_eq!(key, "s3:prefix", "only s3:prefix is evaluated here");
                            prefixes =
                                Some(strings(values).into_iter().map(|v| (v, like)).collect());
                        }
                    }
                }
                Statement {
                    allow: match st["Effect"].as_str() {
                        Some("Allow") => true,
                        Some("Deny") => false,
                        other => panic!("Effect {other:?}"),
                    },
                    actions: strings(&st["Action"]),
                    resources: strings(&st["Resource"]),
                    prefixes,
                }
            })
            .collect();
        Policy { statements }
    }

    /// Whether the policy allows `action` on `resource` (with `prefix` for a listing).
    pub fn allows(&self, action: &str, resource: &str, prefix: Option<&str>) -> bool {
        let applies = |st: &Statement| {
            st.actions.iter().any(|a| wildcard(a, action))
                && st.resources.iter().any(|r| wildcard(r, resource))
                && match (&st.prefixes, prefix) {
                    (None, _) => true,
                    // A condition on a key the request does not carry does not match.
                    (Some(_), None) => false,
                    (Some(ps), Some(p)) => ps
                        .iter()
                        .any(|(pat, like)| if *like { wildcard(pat, p) } else { pat == p }),
                }
        };
        if self.statements.iter().any(|st| !st.allow && applies(st)) {
            return false;
        }
        self.statements.iter().any(|st| st.allow && applies(st))
    }
}

#[test]
fn the_policy_gate_maps_requests_and_matches_like_iam() {
    assert!(wildcard("nightly/*", "nightly/"));
    assert!(wildcard("nightly/*", "nightly/a/b"));
    assert!(!wildcard("nightly/*", "nightly"));
    assert!(!wildcard("nightly/*", "night"));
    assert!(wildcard(
        "arn:aws:s3:::b/p/*.json",
        "arn:aws:s3:::b/p/x/y.json"
    ));
    let head = "GET /work/?list-type=2&prefix=nightly%2Fredacted%2F HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        s3_checks(head),
        vec![(
            "s3:ListBucket",
            "arn:aws:s3:::work".to_owned(),
            Some("nightly/redacted/".to_owned())
        )]
    );
    let policy = Policy::parse(&serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::work",
         "Condition": {"StringLike": {"s3:prefix": ["nightly/*"]}}},
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "arn:aws:s3:::work/nightly/*"},
        {"Effect": "Deny", "Action": "s3:*", "Resource": "arn:aws:s3:::work/nightly/secret/*"}
    ]}));
    assert!(policy.allows("s3:ListBucket", "arn:aws:s3:::work", Some("nightly/")));
    assert!(!policy.allows("s3:ListBucket", "arn:aws:s3:::work", Some("")));
    assert!(!policy.allows("s3:ListBucket", "arn:aws:s3:::work", None));
    assert!(policy.allows("s3:PutObject", "arn:aws:s3:::work/nightly/a", None));
    assert!(!policy.allows("s3:DeleteObject", "arn:aws:s3:::work/nightly/a", None));
    assert!(!policy.allows("s3:GetObject", "arn:aws:s3:::work/nightly/secret/a", None));
    assert!(!policy.allows("s3:GetObject", "arn:aws:s3:::other/nightly/a", None));
}
