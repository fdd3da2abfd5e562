//! `clearframe run`, `select` and the single stages with catalog, ledger, clips, work folder and
//! output in S3 (a real `s3s-fs` on loopback): the dataset must be byte-identical to the same run
//! on local folders.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use clearframe::storage::Store;

use crate::common::{clearframe, fixture};
use crate::storage::server::{ACCESS_KEY, S3sServer, SECRET_KEY};

const AS_OF: &str = "2026-11-01T00:00:00Z";
pub(crate) const BUCKET: &str = "clearframe-e2e";

/// The command with the server's credentials in the environment (the standard AWS chain).
pub(crate) fn cmd(server: &S3sServer, subcommand: &str) -> assert_cmd::Command {
    let mut c = clearframe();
    c.arg(subcommand)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .args(["--s3-endpoint", &server.endpoint]);
    c
}

/// Uploads the demo catalog, ledger and every clip the catalog names under `input/`.
pub(crate) fn upload_demo(store: &Arc<dyn Store>) {
    for name in ["demo-catalog.jsonl", "demo-ledger.jsonl"] {
        store
            .put(
                &format!("input/{name}"),
                Bytes::from(std::fs::read(fixture(name)).unwrap()),
            )
            .unwrap();
    }
    let catalog = std::fs::read_to_string(fixture("demo-catalog.jsonl")).unwrap();
    let mut uris: Vec<String> = catalog
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["uri"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    uris.sort();
    uris.dedup();
    assert!(
        uris.iter().any(|u| u.starts_with("bad/")) && uris.iter().any(|u| u.starts_with("media/")),
        "{uris:?}"
    );
    for uri in uris {
        store
            .put(
                &format!("input/{uri}"),
                Bytes::from(std::fs::read(fixture(&uri)).unwrap()),
            )
            .unwrap();
    }
}

/// Every file below a local folder, by `/`-separated path.
pub(crate) fn local_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let key = p
                    .strip_prefix(root)
                    .unwrap()
                    .components()
                    .map(|c| c.as_os_str().to_str().unwrap())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(key, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Every object under `prefix`, keys relative to it.
pub(crate) fn s3_files(store: &Arc<dyn Store>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    store
        .list(&format!("{prefix}/"))
        .unwrap()
        .into_iter()
        .map(|m| {
            (
                m.key[prefix.len() + 1..].to_owned(),
                store.get(&m.key).unwrap().to_vec(),
            )
        })
        .collect()
}

pub(crate) fn assert_same_files(
    local: &BTreeMap<String, Vec<u8>>,
    remote: &BTreeMap<String, Vec<u8>>,
) {
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        remote.keys().collect::<Vec<_>>(),
        "the same files"
    );
    for (k, v) in local {
        assert!(
            v == &remote[k],
            "{k} differs between the local and the S3 dataset"
        );
    }
}

/// The same dataset version, built over a different previous version: every file byte for byte
/// but the change log against the previous version (`changes.json`, `removed.jsonl`), and
/// `dataset.json` the same but for those two files' hashes, the version folder's name (the
/// blake3 of its files, the change log included) and its seal.
pub(crate) fn assert_same_dataset(
    expected: &BTreeMap<String, Vec<u8>>,
    actual: &BTreeMap<String, Vec<u8>>,
) {
    const HISTORY: [&str; 2] = ["changes.json", "removed.jsonl"];
    let version = |files: &BTreeMap<String, Vec<u8>>| -> String {
        let r: serde_json::Value = serde_json::from_slice(&files["dataset.json"]).unwrap();
        format!("versions/{}/", r["version"].as_str().unwrap())
    };
    // Files keyed by name inside the version folder (`version/...`), the change log left out.
    let strip = |files: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        let folder = version(files);
        files
            .iter()
            .filter(|(k, _)| *k != "dataset.json")
            .filter_map(|(k, v)| match k.strip_prefix(&folder) {
                Some(name) if HISTORY.contains(&name) => None,
                Some(name) => Some((format!("version/{name}"), v.clone())),
                None => Some((k.clone(), v.clone())),
            })
            .collect()
    };
    assert_same_files(&strip(expected), &strip(actual));
    let record = |files: &BTreeMap<String, Vec<u8>>| -> serde_json::Value {
        let folder = version(files);
        let mut r: serde_json::Value = serde_json::from_slice(&files["dataset.json"]).unwrap();
        let listed = std::mem::take(r["files"].as_object_mut().unwrap());
        for (k, v) in listed {
            let name = k
                .strip_prefix(&folder)
                .expect("files are in the version folder");
            if !HISTORY.contains(&name) {
                r["files"][format!("version/{name}")] = v;
            }
        }
        for h in HISTORY {
            assert!(files.contains_key(&format!("{folder}{h}")), "{h} missing");
        }
        r.as_object_mut().unwrap().remove("seal");
        r.as_object_mut().unwrap().remove("version");
        r
    };
    assert_eq!(record(expected), record(actual));
}

/// A file of the version folder of a dataset given as its files.
pub(crate) fn version_bytes<'a>(files: &'a BTreeMap<String, Vec<u8>>, name: &str) -> &'a [u8] {
    let r: serde_json::Value = serde_json::from_slice(&files["dataset.json"]).unwrap();
    &files[&format!("versions/{}/{name}", r["version"].as_str().unwrap())]
}

/// The demo as a plain local run into `out` (exit 1: v-corrupt is broken on purpose).
fn local_demo(out: &Path) {
    clearframe()
        .args(["run", "--as-of", AS_OF, "--fps", "4", "--catalog"])
        .arg(fixture("demo-catalog.jsonl"))
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .arg("--out")
        .arg(out)
        .assert()
        .code(1);
}

#[test]
fn run_with_catalog_clips_and_output_in_s3_matches_the_local_run_byte_for_byte() {
    let server = S3sServer::start();
    let store = server.store(BUCKET, "");
    upload_demo(&store);
    let s3 = |k: &str| format!("s3://{BUCKET}/{k}");

    // Local run.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    local_demo(&local);

    // The same run on S3, over an earlier dataset ClearFrame wrote there (other clips): its
    // objects must be gone afterwards. (Only a dataset.json ClearFrame wrote makes a prefix
    // replaceable; a stray object alone would be refused: tests/trust.rs.)
    let earlier = dir.path().join("earlier");
    crate::emit::build(&earlier, crate::emit::frames());
    let earlier_files = local_files(&earlier);
    let earlier_frame = crate::common::frame_key(&earlier, "porch-dog", 0);
    assert!(earlier_files.contains_key(&earlier_frame));
    for (k, v) in &earlier_files {
        store
            .put(&format!("datasets/demo/{k}"), Bytes::from(v.clone()))
            .unwrap();
    }
    let out = cmd(&server, "run")
        .args(["--as-of", AS_OF, "--fps", "4"])
        .args([
            "--catalog",
            &s3("input/demo-catalog.jsonl"),
            "--ledger",
            &s3("input/demo-ledger.jsonl"),
            "--out",
            &s3("datasets/demo"),
        ])
        .assert()
        .code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("not in dataset: v-corrupt"), "{stdout}");

    let local_files = local_files(&local);
    let remote_files = s3_files(&store, "datasets/demo");
    assert!(
        local_files
            .keys()
            .filter(|k| k.starts_with("frames/"))
            .count()
            >= 50,
        "{:?}",
        local_files.keys()
    );
    assert!(local_files.contains_key("dataset.json"));
    assert!(!remote_files.contains_key(&earlier_frame));
    // The same version; its change log names what the earlier one had and this one does not.
    assert_same_dataset(&local_files, &remote_files);
    let removed =
        String::from_utf8(version_bytes(&remote_files, "removed.jsonl").to_vec()).unwrap();
    let gone: Vec<serde_json::Value> = removed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        gone.iter()
            .map(|g| g["video_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["porch-dog", "street-bikes"]
    );
    assert!(gone.iter().all(|g| g["reason_code"] == "not_in_catalog"));
    assert!(
        gone[0]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| *p == earlier_frame)
    );

    // The stages one at a time, with the work folder and the dataset in S3: the same bytes.
    cmd(&server, "select")
        .args(["--as-of", AS_OF])
        .args([
            "--catalog",
            &s3("input/demo-catalog.jsonl"),
            "--ledger",
            &s3("input/demo-ledger.jsonl"),
            "--out",
            &s3("work"),
        ])
        .assert()
        .success();
    cmd(&server, "redact")
        .args(["--fps", "4", "--work", &s3("work")])
        .assert()
        .code(1);
    assert!(
        store.list("work/redacted/v-car-front/").unwrap().len() >= 10,
        "redacted frames are in S3"
    );
    cmd(&server, "detect")
        .args(["--work", &s3("work")])
        .assert()
        .success();
    cmd(&server, "emit")
        .args(["--work", &s3("work"), "--out", &s3("datasets/staged")])
        .assert()
        .code(1);
    assert_same_files(&local_files, &s3_files(&store, "datasets/staged"));

    // A clip whose bytes in S3 differ from the catalog's blake3 fails and leaves no frame.
    store
        .put(
            "input/media/bikes.mp4",
            Bytes::from(std::fs::read(fixture("media/carphone_pristine.mp4")).unwrap()),
        )
        .unwrap();
    cmd(&server, "run")
        .args(["--as-of", AS_OF, "--fps", "4"])
        .args([
            "--catalog",
            &s3("input/demo-catalog.jsonl"),
            "--ledger",
            &s3("input/demo-ledger.jsonl"),
            "--out",
            &s3("datasets/tampered"),
        ])
        .assert()
        .code(1);
    let tampered = s3_files(&store, "datasets/tampered");
    assert!(
        !tampered
            .keys()
            .any(|k| k.starts_with("frames/v-street-bikes/")),
        "frames of a clip with the wrong hash were kept"
    );
    let record: serde_json::Value = serde_json::from_slice(&tampered["dataset.json"]).unwrap();
    let failed = record["failed_clips"].to_string();
    assert!(
        failed.contains("v-street-bikes")
            && failed.contains("\"code\":\"tampered\"")
            && failed.contains("differs from the catalog's"),
        "{failed}"
    );
}

#[test]
fn select_reads_and_writes_s3() {
    let server = S3sServer::start();
    let store = server.store(BUCKET, "");
    upload_demo(&store);
    let s3 = |k: &str| format!("s3://{BUCKET}/{k}");
    let dir = tempfile::tempdir().unwrap();
    clearframe()
        .args(["select", "--as-of", AS_OF, "--catalog"])
        .arg(fixture("demo-catalog.jsonl"))
        .arg("--ledger")
        .arg(fixture("demo-ledger.jsonl"))
        .arg("--out")
        .arg(dir.path())
        .assert()
        .success();
    let out = cmd(&server, "select")
        .args(["--as-of", AS_OF])
        .args([
            "--catalog",
            &s3("input/demo-catalog.jsonl"),
            "--ledger",
            &s3("input/demo-ledger.jsonl"),
            "--out",
            &s3("sel"),
        ])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        stdout.contains("wrote s3://clearframe-e2e/sel/selection.jsonl"),
        "{stdout}"
    );
    assert_eq!(
        &store.get("sel/selection.jsonl").unwrap()[..],
        &std::fs::read(dir.path().join("selection.jsonl")).unwrap()[..]
    );
    let record: serde_json::Value =
        serde_json::from_slice(&store.get("sel/select.json").unwrap()).unwrap();
    assert_eq!(record["catalog"]["uri"], s3("input/demo-catalog.jsonl"));
    assert_eq!(record["included"], 5);

    // A missing ledger in S3 stops everything (exit 2) and writes nothing.
    cmd(&server, "select")
        .args(["--as-of", AS_OF])
        .args([
            "--catalog",
            &s3("input/demo-catalog.jsonl"),
            "--ledger",
            &s3("input/missing.jsonl"),
            "--out",
            &s3("sel2"),
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("missing.jsonl"));
    assert!(store.list("sel2/").unwrap().is_empty());
}

/// Faults of the object store (`tests/storage/faults.rs`: a proxy on loopback in front of the
/// real test server that answers 10% of requests with 500, 503 SlowDown, a reset before or after
/// the server did the work, half a body, or a pause): the whole pipeline through it, with the
/// catalog, ledger, clips, work folder and dataset all in S3, gives the fault-free dataset, and
/// a rebuild through it too.
#[test]
fn a_build_through_injected_store_faults_gives_the_fault_free_dataset() {
    let server = S3sServer::start();
    let store = server.store(BUCKET, "");
    upload_demo(&store);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    local_demo(&local);
    let proxy = crate::storage::faults::FaultProxy::start(&server.endpoint, 0.10, 0xFA_017);
    let s3 = |k: &str| format!("s3://{BUCKET}/{k}");
    let run = |out: &str| {
        clearframe()
            .args(["run", "--as-of", AS_OF, "--fps", "4"])
            .args(["--catalog", &s3("input/demo-catalog.jsonl")])
            .args(["--ledger", &s3("input/demo-ledger.jsonl")])
            .args(["--work", &s3("faults/work"), "--out", &s3(out)])
            .args(["--s3-endpoint", &proxy.endpoint])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .assert()
            .code(1)
    };
    let a = run("faults/ds");
    let said = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    assert!(said.contains("not in dataset: v-corrupt"), "{said}");
    assert_same_dataset(&local_files(&local), &s3_files(&store, "faults/ds"));
    // A rebuild into another prefix through the same faults: the work folder is read back.
    run("faults/ds2");
    assert_same_dataset(&local_files(&local), &s3_files(&store, "faults/ds2"));
    let injected = proxy.injected();
    println!(
        "store faults: {} requests, {} injected: {injected:?}",
        proxy.requests(),
        injected.values().sum::<u64>()
    );
    assert!(
        injected.len() >= 5,
        "too few kinds of fault were injected: {injected:?}"
    );
}

/// Each command under exactly the IAM policy `deploy/iam/` documents for it, enforced by a
/// policy gate in front of the real S3 test server (the buckets of the deploy manifests:
/// `clips`, `consent`, `clearframe-work`, `datasets`): two shards, the emit, the audit check
/// and a single-process rebuild all succeed with no request denied, and give the local
/// dataset; a command under a role too small for it is refused with a clear error.
#[test]
fn every_command_works_under_exactly_the_permissions_deploy_iam_documents() {
    use crate::storage::faults::FaultProxy;
    let server = S3sServer::start();
    upload_demo(&server.store("clips", "catalog"));
    server
        .store("consent", "")
        .put(
            "ledger.jsonl",
            Bytes::from(std::fs::read(fixture("demo-ledger.jsonl")).unwrap()),
        )
        .unwrap();
    let datasets = server.store("datasets", "");
    server.store("clearframe-work", "");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    local_demo(&local);

    let role = |name: &str| {
        let doc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(crate::common::root().join(format!("deploy/iam/{name}.json"))).unwrap(),
        )
        .unwrap();
        FaultProxy::with_policy(&server.endpoint, &doc)
    };
    let as_role = |proxy: &FaultProxy, sub: &[&str]| {
        let mut c = clearframe();
        c.args(sub)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("CLEARFRAME_AUDIT_LOG", "s3://clearframe-work/audit")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL")
            .args(["--s3-endpoint", &proxy.endpoint]);
        c
    };
    let inputs = [
        "--as-of",
        AS_OF,
        "--fps",
        "4",
        "--catalog",
        "s3://clips/catalog/input/demo-catalog.jsonl",
        "--ledger",
        "s3://consent/ledger.jsonl",
        "--work",
        "s3://clearframe-work/nightly",
    ];
    let used = |proxy: &FaultProxy, what: &str| {
        let denied = proxy.denied();
        assert!(denied.is_empty(), "{what}: denied {denied:#?}");
        let mut seen: Vec<String> = proxy
            .decisions()
            .iter()
            .map(|d| match &d.prefix {
                Some(p) => format!("{} {} prefix={p}", d.action, d.resource),
                None => {
                    let r = d.resource.rsplit_once('/').map_or(&*d.resource, |(a, _)| a);
                    format!("{} {r}/…", d.action)
                }
            })
            .collect();
        seen.sort();
        seen.dedup();
        println!("{what}:\n  {}", seen.join("\n  "));
    };

    let shard = role("shard");
    for i in 0..2 {
        let a = as_role(&shard, &["run"])
            .args(inputs)
            .args(["--shard", &format!("{i}/2")])
            .assert();
        let code = a.get_output().status.code();
        assert!(
            matches!(code, Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&a.get_output().stderr)
        );
    }
    used(&shard, "run --shard (deploy/iam/shard.json)");
    // A multipart upload (CreateMultipartUpload, UploadPart, CompleteMultipartUpload, as the
    // objects over the threshold go up) needs s3:PutObject and nothing more.
    shard.clear();
    let options = clearframe::storage::S3Options {
        endpoint: Some(shard.endpoint.clone()),
        multipart_threshold: 5 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        ..server.options()
    };
    let work = clearframe::storage::S3Store::open("clearframe-work", "nightly", &options).unwrap();
    work.put("big.bin", Bytes::from(vec![7u8; 11 * 1024 * 1024]))
        .unwrap();
    let parts = shard
        .decisions()
        .iter()
        .filter(|d| d.resource.ends_with("/nightly/big.bin"))
        .count();
    assert!(parts >= 5, "create, 3 parts and complete: {parts} requests");
    assert!(shard.denied().is_empty(), "{:#?}", shard.denied());
    work.delete("big.bin").unwrap();

    let emit = role("emit");
    as_role(&emit, &["emit"])
        .args(["--work", "s3://clearframe-work/nightly"])
        .args(["--out", "s3://datasets/person-detector/nightly"])
        .assert()
        .code(1);
    used(&emit, "emit (deploy/iam/emit.json)");
    assert_same_dataset(
        &local_files(&local),
        &s3_files(&datasets, "person-detector/nightly"),
    );

    let auditor = role("auditor");
    as_role(&auditor, &["audit", "verify"])
        .arg("s3://clearframe-work/audit")
        .assert()
        .code(0);
    used(&auditor, "audit verify (deploy/iam/auditor.json)");

    let run = role("run");
    as_role(&run, &["run"])
        .args(inputs)
        .args(["--out", "s3://datasets/person-detector/nightly"])
        .assert()
        .code(1);
    used(&run, "run --work --out (deploy/iam/run.json)");
    assert_same_dataset(
        &local_files(&local),
        &s3_files(&datasets, "person-detector/nightly"),
    );

    // Too small a role: a shard under emit's policy (no read of the catalog's bucket) is
    // refused, naming the object, and the gate did deny it (it is not a pass-through).
    let a = as_role(&emit, &["run"])
        .args(inputs)
        .args(["--shard", "0/2"])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(
        err.contains("s3://clips/catalog/input/demo-catalog.jsonl")
            && err.contains("access denied"),
        "{err}"
    );
    assert!(!emit.denied().is_empty());
}
