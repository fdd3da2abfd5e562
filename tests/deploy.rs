//! Scale-out on real engines: the Kubernetes and AWS Batch manifests validate against the
//! engines' own client models, and the Ray driver runs the shards on a real two-node Ray cluster
//! (on loopback) against the real S3-compatible server, merging into the dataset a single process
//! writes, byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::root;
use crate::run_s3::{BUCKET, assert_same_files, cmd, s3_files, upload_demo};
use crate::storage::server::{ACCESS_KEY, S3sServer, SECRET_KEY};

const AS_OF: &str = "2026-11-01T00:00:00Z";

fn python() -> PathBuf {
    let p = crate::emit::venv_python("CLEARFRAME_DEPLOY_PYTHON", "deploy-venv");
    assert!(
        p.exists(),
        "{} is missing\nhint: run scripts/setup-consumers.sh deploy",
        p.display()
    );
    p
}

#[test]
fn deployment_manifests_validate_against_the_engines_client_models() {
    let out = Command::new(python())
        .arg(root().join("deploy/check_manifests.py"))
        .arg(root().join("deploy"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for what in [
        "shards.yaml: Job clearframe-shards is a valid V1Job",
        "emit.yaml: Job clearframe-emit is a valid V1Job",
        "job-definition.json: a valid RegisterJobDefinition input",
    ] {
        assert!(text.contains(what), "{what} not checked: {text}");
    }
}

/// A local Ray cluster (a head and a worker node on loopback), stopped when dropped.
struct RayCluster {
    ray: PathBuf,
    env: Vec<(String, String)>,
    address: String,
}

impl RayCluster {
    fn start(temp: &Path) -> RayCluster {
        let ray = python().with_file_name("ray");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let env = vec![
            ("RAY_USAGE_STATS_ENABLED".to_owned(), "0".to_owned()),
            ("RAY_DISABLE_DOCKER_CPU_WARNING".to_owned(), "1".to_owned()),
        ];
        let cluster = RayCluster {
            ray,
            env,
            address: format!("127.0.0.1:{port}"),
        };
        cluster.ray_cmd(&[
            "start",
            "--head",
            &format!("--port={port}"),
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            &format!("--temp-dir={}", temp.display()),
        ]);
        cluster.ray_cmd(&[
            "start",
            &format!("--address={}", cluster.address),
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
        ]);
        cluster
    }

    fn ray_cmd(&self, args: &[&str]) {
        let out = Command::new(&self.ray)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ray {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for RayCluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.ray)
            .args(["stop", "--force"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
    }
}

#[test]
fn a_ray_cluster_runs_three_shards_against_s3_and_emit_merges_the_single_process_dataset() {
    let server = S3sServer::start();
    let store = server.store(BUCKET, "");
    upload_demo(&store);
    let s3 = |k: &str| format!("s3://{BUCKET}/{k}");
    let run_args = [
        "--catalog",
        &s3("input/demo-catalog.jsonl"),
        "--ledger",
        &s3("input/demo-ledger.jsonl"),
        "--as-of",
        AS_OF,
        "--fps",
        "4",
    ]
    .map(str::to_owned);

    // The single-process build.
    cmd(&server, "run")
        .args(&run_args)
        .args(["--out", &s3("datasets/single")])
        .assert()
        .code(1);

    // The same through Ray: one task per shard on a head and a worker node, then emit.
    let tmp = tempfile::Builder::new()
        .prefix("cf-ray")
        .tempdir_in("/tmp")
        .unwrap();
    let cluster = RayCluster::start(&tmp.path().join("ray"));
    let out = Command::new(python())
        .arg(root().join("deploy/ray/driver.py"))
        .args(["--address", &cluster.address, "--shards", "3"])
        .args(["--work", &s3("work/nightly"), "--out", &s3("datasets/ray")])
        .arg("--clearframe")
        .arg(assert_cmd::cargo::cargo_bin("clearframe"))
        .arg(format!("--store-arg=--s3-endpoint={}", server.endpoint))
        .arg("--")
        .args(&run_args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    drop(cluster);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    // Exit 1: the dataset lists the demo's corrupt clip as failed.
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    for i in 0..3 {
        assert!(text.contains(&format!("shard {i}/3 on node")), "{text}");
    }
    assert!(
        text.contains("3 shards on 2 node(s)"),
        "both nodes ran shards: {text}"
    );
    let single = s3_files(&store, "datasets/single");
    assert!(single.keys().filter(|k| k.starts_with("frames/")).count() >= 50);
    assert_same_files(&single, &s3_files(&store, "datasets/ray"));
    // The work prefix holds the shards' records.
    assert_eq!(
        store
            .list("work/nightly/shards/")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect::<Vec<_>>()
            .len(),
        6
    );
}
