//! A real S3-compatible server for tests and benches: `s3s-fs` (installed by
//! `scripts/install-s3s.sh`, cached outside the repository) on a free loopback port, with its own
//! temporary data folder and access keys. Dropping the guard stops the server.

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clearframe::storage::{S3Credentials, S3Options, S3Store, Store};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "clearframe-test";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "clearframe-test-secret";

/// A running `s3s-fs`; stopped (killed and reaped) on drop.
pub struct S3sServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// The server's data folder (one sub-folder per bucket).
    pub data: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

/// Where the binary is: `$CLEARFRAME_S3S_BIN` (what `scripts/test.sh` sets from
/// `scripts/install-s3s.sh`), else `${CLEARFRAME_CACHE:-~/.cache/clearframe}/bin/s3s-fs`.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CLEARFRAME_S3S_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("CLEARFRAME_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/clearframe"),
        PathBuf::from,
    );
    cache.join("bin/s3s-fs")
}

impl S3sServer {
    /// Starts a server; panics (failing the test) with a hint when the binary is missing.
    pub fn start() -> S3sServer {
        let bin = binary();
        assert!(
            bin.is_file(),
            "s3s-fs not found at {}\nhint: run scripts/install-s3s.sh (builds s3s-fs 0.14.1 once, about 2 minutes, cached outside the repository)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut last_error = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            match spawn(&dir, &data, port) {
                Ok(child) => {
                    return S3sServer {
                        child,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        port,
                        data,
                        dir,
                    };
                }
                Err(err) => last_error = err,
            }
        }
        panic!("could not start s3s-fs: {last_error}");
    }

    /// Stops the server (connections are refused until [`S3sServer::resume`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same data.
    pub fn resume(&mut self) {
        self.child = spawn(&self.dir, &self.data, self.port)
            .unwrap_or_else(|e| panic!("restarting s3s-fs: {e}"));
    }

    /// The server's process id (benches read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Options for this server with the right keys.
    pub fn options(&self) -> S3Options {
        self.options_with_secret(SECRET_KEY)
    }

    /// Options for this server with the given secret (to test rejected credentials).
    pub fn options_with_secret(&self, secret: &str) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".to_owned()),
            credentials: Some(S3Credentials {
                access_key_id: ACCESS_KEY.to_owned(),
                secret_access_key: secret.to_owned(),
            }),
            ..S3Options::default()
        }
    }

    /// Creates `bucket` and opens `s3://bucket/prefix` with `options`.
    pub fn store_with(&self, bucket: &str, prefix: &str, options: &S3Options) -> Arc<dyn Store> {
        let admin = S3Store::open(bucket, "", &self.options()).unwrap();
        admin
            .create_bucket()
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
        Arc::new(S3Store::open(bucket, prefix, options).unwrap())
    }

    /// Creates `bucket` and opens `s3://bucket/prefix` with this server's options.
    pub fn store(&self, bucket: &str, prefix: &str) -> Arc<dyn Store> {
        self.store_with(bucket, prefix, &self.options())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".log") {
                out += &std::fs::read_to_string(entry.path()).unwrap_or_default();
            }
        }
        out
    }
}

/// Spawns s3s-fs on `port` and waits until it accepts connections.
fn spawn(dir: &tempfile::TempDir, data: &std::path::Path, port: u16) -> Result<Child, String> {
    let bin = binary();
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log_path = dir.path().join(format!("s3s-fs.{n}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(child);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!(
                "s3s-fs exited with {status}: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("s3s-fs did not accept connections within 10 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for S3sServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
