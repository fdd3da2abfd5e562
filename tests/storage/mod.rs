//! Storage: one suite ([`suite`]) run against the local store and against S3 on a real
//! S3-compatible server (`s3s-fs` on loopback, see [`server`]), plus S3-only checks: rejected
//! credentials, `require_sse`, what the server does with SSE headers, unreachable endpoints.

pub(crate) mod faults;
pub(crate) mod server;

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use clearframe::storage::{self, S3Options, Sse, StorageError, Store, Uploader};

use server::S3sServer;

/// Above the default 16 MiB multipart threshold: three 8 MiB parts, the last one short.
const LARGE: usize = 17 * 1024 * 1024 + 12_345;

/// Deterministic, incompressible-looking bytes (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A reader that generates `len` bytes of [`pattern`] without holding them.
struct PatternReader {
    left: usize,
    x: u64,
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left).min(64 * 1024);
        for b in &mut buf[..n] {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            *b = self.x as u8;
        }
        self.left -= n;
        Ok(n)
    }
}

fn keys(store: &Arc<dyn Store>, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    match result {
        Err(StorageError::NotFound { url }) => {
            assert!(url.contains("missing/object.bin"), "{what}: {url}");
        }
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

/// The behaviour every store must have. Each step says what it pins.
fn suite(store: &Arc<dyn Store>) {
    // put / get / head round trip, including an empty object.
    store.put("a/1.txt", Bytes::from_static(b"one")).unwrap();
    store.put("a/2.txt", Bytes::from_static(b"two!")).unwrap();
    store
        .put("a/b/3.txt", Bytes::from_static(b"three"))
        .unwrap();
    store.put("ab.txt", Bytes::new()).unwrap();
    assert_eq!(&store.get("a/1.txt").unwrap()[..], b"one");
    assert_eq!(store.get("ab.txt").unwrap().len(), 0);
    let head = store.head("a/2.txt").unwrap();
    assert_eq!((head.key.as_str(), head.size), ("a/2.txt", 4));
    let etag = head.etag.clone().expect("an ETag");
    store
        .put("a/2.txt", Bytes::from_static(b"TWO, rewritten"))
        .unwrap();
    let head = store.head("a/2.txt").unwrap();
    assert_eq!(head.size, 14);
    assert_ne!(
        head.etag.as_deref(),
        Some(etag.as_str()),
        "the ETag changes when the object is rewritten"
    );
    assert!(store.url("a/1.txt").ends_with("a/1.txt"));

    // Missing keys are NotFound on every read path, naming the object.
    assert_not_found(store.get("missing/object.bin"), "get");
    assert_not_found(store.head("missing/object.bin"), "head");
    assert_not_found(store.reader("missing/object.bin").map(|_| ()), "reader");

    // Keys cannot escape the store.
    for bad in ["../x", "/abs", "a//b", ""] {
        assert!(
            matches!(
                store.put(bad, Bytes::new()),
                Err(StorageError::InvalidKey { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        store.list("../"),
        Err(StorageError::InvalidKey { .. })
    ));

    // Listing is a plain string prefix, sorted, with sizes.
    assert_eq!(keys(store, "a/"), ["a/1.txt", "a/2.txt", "a/b/3.txt"]);
    assert_eq!(
        keys(store, "a"),
        ["a/1.txt", "a/2.txt", "a/b/3.txt", "ab.txt"]
    );
    assert_eq!(keys(store, "a/b"), ["a/b/3.txt"]);
    assert_eq!(
        keys(store, ""),
        ["a/1.txt", "a/2.txt", "a/b/3.txt", "ab.txt"]
    );
    assert!(keys(store, "nothing/").is_empty());
    let listed = store.list("a/1").unwrap();
    assert_eq!((listed.len(), listed[0].size), (1, 3));

    // Delete removes; deleting again (or a missing key) succeeds.
    store.delete("a/1.txt").unwrap();
    assert!(store.get("a/1.txt").unwrap_err().is_not_found());
    store.delete("a/1.txt").unwrap();
    store.delete("missing/object.bin").unwrap();
    assert_eq!(keys(store, "a/"), ["a/2.txt", "a/b/3.txt"]);

    // Records replace atomically: concurrent readers see one whole version, never a mix or a
    // truncated file. Versions differ in length and content.
    let version = |v: u8| Bytes::from(vec![v; 256 * 1024 + v as usize * 1000]);
    store.put_record("records/run.json", version(0)).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let data = store.get("records/run.json").unwrap();
                        let v = data[0];
                        assert_eq!(
                            data.len(),
                            256 * 1024 + v as usize * 1000,
                            "torn read of version {v}"
                        );
                        assert!(data.iter().all(|&b| b == v), "mixed read of version {v}");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for v in 1..=20u8 {
            store.put_record("records/run.json", version(v)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    });
    assert_eq!(store.get("records/run.json").unwrap(), version(20));
    assert_eq!(
        keys(store, "records/"),
        ["records/run.json"],
        "no temp files are visible"
    );

    // Multipart: an object above the threshold, from memory and from a reader.
    let large = Bytes::from(pattern(LARGE, 7));
    store.put("big/from-memory.bin", large.clone()).unwrap();
    assert_eq!(
        store.head("big/from-memory.bin").unwrap().size,
        LARGE as u64
    );
    assert!(
        store.get("big/from-memory.bin").unwrap() == large,
        "multipart object from memory differs"
    );
    let n = store
        .put_reader(
            "big/from-reader.bin",
            &mut PatternReader { left: LARGE, x: 7 },
        )
        .unwrap();
    assert_eq!(n, LARGE as u64);
    assert!(
        store.get("big/from-reader.bin").unwrap() == large,
        "multipart object from a reader differs"
    );
    // put_reader below the threshold (a single PUT) and of nothing at all.
    assert_eq!(
        store.put_reader("small/r.bin", &mut &b"tiny"[..]).unwrap(),
        4
    );
    assert_eq!(&store.get("small/r.bin").unwrap()[..], b"tiny");
    assert_eq!(
        store
            .put_reader("small/empty.bin", &mut io::empty())
            .unwrap(),
        0
    );
    assert_eq!(store.head("small/empty.bin").unwrap().size, 0);

    // Streaming read: small reads reassemble the object; dropping a reader early is fine.
    let mut reader = store.reader("big/from-memory.bin").unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    assert_eq!((total, hasher.finalize()), (LARGE, blake3::hash(&large)));
    let mut early = store.reader("big/from-reader.bin").unwrap();
    let mut first = [0u8; 10];
    early.read_exact(&mut first).unwrap();
    assert_eq!(first, large[..10]);
    drop(early);

    // Many small objects with bounded concurrency, then a listing that needs several pages on S3
    // (1,000 keys per page).
    let uploader = Uploader::new(Arc::clone(store), 16);
    for i in 0..1_105u32 {
        uploader.submit(format!("many/{i:05}.jpg"), i.to_le_bytes().to_vec());
    }
    let stats = uploader.finish().unwrap();
    assert_eq!((stats.objects, stats.bytes), (1_105, 4 * 1_105));
    let many = keys(store, "many/");
    assert_eq!(many.len(), 1_105);
    assert!(many.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert_eq!(many[1_104], "many/01104.jpg");
    assert_eq!(keys(store, "many/0110").len(), 5);
    assert_eq!(
        &store.get("many/01000.jpg").unwrap()[..],
        &1_000u32.to_le_bytes()
    );

    // A failed upload in a batch is reported, the others still land.
    let uploader = Uploader::new(Arc::clone(store), 4);
    uploader.submit("batch/ok-1", vec![1]);
    uploader.submit("batch/../escape", vec![2]);
    uploader.submit("batch/ok-2", vec![3]);
    match uploader.finish() {
        Err(StorageError::Batch {
            failed: 1,
            total: 3,
            first,
        }) => {
            assert!(matches!(*first, StorageError::InvalidKey { .. }), "{first}");
        }
        other => panic!("expected a batch error, got {other:?}"),
    }
    assert_eq!(keys(store, "batch/"), ["batch/ok-1", "batch/ok-2"]);
}

#[test]
fn local_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    let store =
        storage::open(&format!("file://{}", root.display()), &S3Options::default()).unwrap();
    suite(&store);
    assert!(
        root.join("big/from-memory.bin").is_file(),
        "keys map to files under the root"
    );
}

#[test]
fn s3_store_passes_the_suite() {
    let server = S3sServer::start();
    let store = server.store("suite", "deep/prefix");
    suite(&store);
    // The prefix is honoured on the server side, and nothing leaked outside it.
    let bucket_root =
        Arc::new(storage::S3Store::open("suite", "", &server.options()).unwrap()) as Arc<dyn Store>;
    let all = keys(&bucket_root, "");
    assert!(
        all.iter().all(|k| k.starts_with("deep/prefix/")),
        "{:?}",
        &all[..3]
    );
    assert!(all.contains(&"deep/prefix/big/from-memory.bin".to_owned()));
}

#[test]
fn s3_open_through_the_url_and_resolve_catalog_uris() {
    let server = S3sServer::start();
    server
        .store("clips", "")
        .put("cam1/a.mp4", Bytes::from_static(b"clip"))
        .unwrap();
    let base = storage::open("s3://clips/cam1", &server.options()).unwrap();
    assert_eq!(base.url("a.mp4"), "s3://clips/cam1/a.mp4");
    let (store, key) = storage::resolve(&base, "s3://clips/cam1/a.mp4", &server.options()).unwrap();
    assert!(Arc::ptr_eq(&store, &base));
    assert_eq!(&store.get(&key).unwrap()[..], b"clip");
    let (store, key) = storage::resolve(&base, "a.mp4", &server.options()).unwrap();
    assert_eq!(&store.get(&key).unwrap()[..], b"clip");
    server
        .store("other", "")
        .put("x/b.mp4", Bytes::from_static(b"other clip"))
        .unwrap();
    let (store, key) = storage::resolve(&base, "s3://other/x/b.mp4", &server.options()).unwrap();
    assert_eq!(
        (store.url(&key).as_str(), &store.get(&key).unwrap()[..]),
        ("s3://other/x/b.mp4", &b"other clip"[..])
    );
}

#[test]
fn s3_wrong_credentials_give_a_clear_error() {
    let server = S3sServer::start();
    server.store("creds", "");
    let wrong = storage::open(
        "s3://creds/p",
        &server.options_with_secret("not-the-secret"),
    )
    .unwrap();
    let err = wrong.put("k.bin", Bytes::from_static(b"x")).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StorageError::Credentials { .. }), "{err:?}");
    assert!(
        message.contains("s3://creds/p/k.bin"),
        "names the object: {message}"
    );
    assert!(message.contains("credentials were rejected"), "{message}");
    assert!(message.contains("hint:"), "{message}");
    let err = wrong.list("").unwrap_err();
    assert!(matches!(err, StorageError::Credentials { .. }), "{err:?}");
    // HEAD answers carry no body: 403 becomes AccessDenied whose message mentions credentials.
    let err = wrong.head("k.bin").unwrap_err();
    assert!(err.to_string().contains("credentials"), "{err}");
}

#[test]
fn s3_missing_bucket_and_unreachable_endpoint() {
    let server = S3sServer::start();
    // (s3s-fs 0.14.1 creates a missing bucket on PutObject, so a listing shows the error.)
    let store = storage::open("s3://no-such-bucket", &server.options()).unwrap();
    let err = store.list("").unwrap_err();
    assert!(matches!(err, StorageError::NoSuchBucket { .. }), "{err:?}");
    assert!(err.to_string().contains("s3://no-such-bucket"), "{err}");

    // A loopback port with nothing listening: a dispatch error after the SDK's retries.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        max_attempts: 2,
        ..server.options()
    };
    let err = storage::open("s3://bucket/p", &options)
        .unwrap()
        .get("k")
        .unwrap_err();
    assert!(matches!(err, StorageError::Dispatch { .. }), "{err:?}");
    assert!(err.to_string().contains("s3://bucket/p/k"), "{err}");
}

/// Reads stream: `reader` returns once the headers are in, and the body arrives while it is read.
/// Stopping the server after the first bytes makes the rest of the read fail with an error (a
/// buffered-whole body would have read to the end), and a broken download is never a silently
/// short object.
#[test]
fn s3_reader_streams_and_reports_a_broken_download() {
    let mut server = S3sServer::start();
    let store = server.store("stream", "");
    let len = 48 * 1024 * 1024;
    store
        .put("clip.mp4", Bytes::from(pattern(len, 11)))
        .unwrap();
    let mut reader = store.reader("clip.mp4").unwrap();
    let mut first = vec![0u8; 1024];
    reader.read_exact(&mut first).unwrap();
    server.stop();
    let mut rest = Vec::new();
    let result = reader.read_to_end(&mut rest);
    assert!(
        result.is_err(),
        "read {} more bytes after the server stopped: the body was buffered whole",
        rest.len()
    );
    assert!(
        rest.len() + 1024 < len,
        "got {} of {len} bytes",
        rest.len() + 1024
    );
    let message = result.unwrap_err().to_string();
    assert!(message.contains("s3://stream/clip.mp4"), "{message}");
}

/// Transient failures are retried with backoff: the server is down when the request starts and
/// comes back 300 ms later; the write still succeeds. With a single attempt it fails.
#[test]
fn s3_retries_with_backoff_while_the_server_is_down() {
    let mut server = S3sServer::start();
    // Backoff has full jitter (a random fraction of 200 ms x 2^n): ten attempts make waiting out
    // the 300 ms outage all but certain.
    let store = server.store_with(
        "retry",
        "",
        &S3Options {
            max_attempts: 10,
            ..server.options()
        },
    );
    store.put("before", Bytes::from_static(b"1")).unwrap();
    let no_retry = storage::open(
        "s3://retry",
        &S3Options {
            max_attempts: 1,
            ..server.options()
        },
    )
    .unwrap();

    server.stop();
    let err = no_retry.put("once", Bytes::from_static(b"x")).unwrap_err();
    assert!(matches!(err, StorageError::Dispatch { .. }), "{err:?}");
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        let put = s.spawn(|| store.put("during", Bytes::from_static(b"2")));
        std::thread::sleep(std::time::Duration::from_millis(300));
        server.resume();
        put.join()
            .unwrap()
            .expect("the write succeeds once the server is back");
    });
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(keys(&store, ""), ["before", "during"]);
}

#[test]
fn s3_require_sse_refuses_writes_without_sse() {
    let server = S3sServer::start();
    let options = S3Options {
        require_sse: true,
        ..server.options()
    };
    let store = server.store_with("strict", "", &options);
    let plain = server.store("strict", "");
    let refused = |result: Result<(), StorageError>| match result {
        Err(err @ StorageError::SseRequired { .. }) => {
            assert!(
                err.to_string().contains("s3://strict/") && err.to_string().contains("--sse"),
                "{err}"
            );
        }
        other => panic!("expected SseRequired, got {other:?}"),
    };
    refused(store.put("a", Bytes::from_static(b"x")));
    refused(store.put("big", Bytes::from(vec![0; LARGE])));
    refused(store.put_record("r.json", Bytes::from_static(b"{}")));
    refused(store.put_reader("s", &mut &b"x"[..]).map(drop));
    match storage::put_many(&store, [("m1", vec![1u8]), ("m2", vec![2])], 2) {
        Err(StorageError::Batch {
            failed: 2, first, ..
        }) => assert!(matches!(*first, StorageError::SseRequired { .. })),
        other => panic!("expected refusals, got {other:?}"),
    }
    assert!(keys(&plain, "").is_empty(), "nothing was written");
    // Reads are not affected.
    plain.put("readable", Bytes::from_static(b"ok")).unwrap();
    assert_eq!(&store.get("readable").unwrap()[..], b"ok");

    // The same through the command-line flags.
    let args = storage::StoreArgs {
        require_sse: true,
        ..Default::default()
    };
    let options = S3Options {
        require_sse: args.to_options().unwrap().require_sse,
        ..server.options()
    };
    refused(
        storage::open("s3://strict", &options)
            .unwrap()
            .put("b", Bytes::from_static(b"x")),
    );
}

/// What s3s-fs 0.14.1 does with SSE headers: it accepts them, stores the object unencrypted and
/// does not echo `x-amz-server-side-encryption` (its PutObject/HeadObject handlers ignore SSE).
/// So without `require_sse` a write with `--sse` succeeds (with a warning); with it the write is
/// refused as unconfirmed and the object removed. If a future s3s-fs confirms SSE, this test
/// fails and says so: then switch the expectation to confirmed encryption.
#[test]
fn s3_sse_headers_against_s3s_fs() {
    let server = S3sServer::start();
    for sse in [
        Sse::Aes256,
        Sse::Kms {
            key_id: Some("test-key".to_owned()),
        },
    ] {
        let lenient = server.store_with(
            "sse",
            "",
            &S3Options {
                sse: Some(sse.clone()),
                ..server.options()
            },
        );
        lenient.put("small", Bytes::from_static(b"secret")).unwrap();
        lenient
            .put("large", Bytes::from(pattern(LARGE, 3)))
            .unwrap();
        for key in ["small", "large"] {
            let head = lenient.head(key).unwrap();
            assert_eq!(
                head.encryption, None,
                "s3s-fs now reports SSE {:?} for {key}: update this test",
                head.encryption
            );
        }

        let strict = server.store_with(
            "sse",
            "",
            &S3Options {
                sse: Some(sse),
                require_sse: true,
                ..server.options()
            },
        );
        for (key, data) in [
            ("strict-small", Bytes::from_static(b"secret")),
            ("strict-large", Bytes::from(pattern(LARGE, 4))),
        ] {
            match strict.put(key, data) {
                Err(err @ StorageError::SseNotConfirmed { .. }) => {
                    assert!(
                        err.to_string().contains(&format!("s3://sse/{key}")),
                        "{err}"
                    );
                    assert!(err.to_string().contains("answered nothing"), "{err}");
                }
                other => panic!("expected SseNotConfirmed, got {other:?}"),
            }
            assert!(
                strict.head(key).unwrap_err().is_not_found(),
                "the unconfirmed object {key} was removed"
            );
        }
    }
}
