//! When the machine breaks under a run: ffmpeg killed mid-clip, a model corrupted on disk, a full
//! disk under `emit` and under `redact`, a read-only output. Each run completes correctly or
//! stops with a clear error; nothing goes missing silently; the earlier dataset version stays
//! whole, and the next run on a healthy machine gives the dataset an undisturbed run gives.
//! (The object store's faults are in `storage::faults` and `run_s3`.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::common::{clearframe, fixture};
use crate::run_s3::{assert_same_dataset, assert_same_files, local_files};
use crate::trust::{clip_line, grant_line};

const AS_OF: &str = "2026-11-01T00:00:00Z";

/// A folder with a two-clip catalog (bikes: 10 s, 40 frames at `--fps 4`; car: 4 s, 17 frames)
/// and a ledger that includes both.
fn two_clips() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("media")).unwrap();
    for name in ["bikes.mp4", "carphone_pristine.mp4"] {
        std::fs::copy(
            fixture(&format!("media/{name}")),
            dir.join("media").join(name),
        )
        .unwrap();
    }
    let lines = [
        clip_line("bikes", "media/bikes.mp4").to_string(),
        clip_line("car", "media/carphone_pristine.mp4").to_string(),
    ];
    std::fs::write(dir.join("catalog.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("ledger.jsonl"), grant_line() + "\n").unwrap();
    tmp
}

/// `run` arguments on that catalog, at `fps`.
fn run_args(dir: &Path, fps: u32) -> Vec<String> {
    [
        "run",
        "--as-of",
        AS_OF,
        "--fps",
        &fps.to_string(),
        "--catalog",
        dir.join("catalog.jsonl").to_str().unwrap(),
        "--ledger",
        dir.join("ledger.jsonl").to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

fn record(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("dataset.json")).unwrap()).unwrap()
}

/// The dataset record in `dir` and its failed clips.
fn failures(dir: &Path) -> (serde_json::Value, Vec<serde_json::Value>) {
    let r = record(dir);
    let failed = r["failed_clips"].as_array().unwrap().clone();
    (r, failed)
}

#[test]
fn ffmpeg_killed_mid_clip_fails_that_clip_only_and_the_next_run_redoes_it() {
    let tmp = two_clips();
    let dir = tmp.path();
    let (work, out, plain) = (dir.join("work"), dir.join("out"), dir.join("plain"));
    let args = run_args(dir, 4);
    clearframe()
        .args(&args)
        .arg("--out")
        .arg(&plain)
        .assert()
        .code(0);

    // A real SIGKILL to the real ffmpeg at the 20th frame it writes (debug builds only), as the
    // out-of-memory killer would send it: bikes has 40 frames at 4 fps, car 17 (untouched).
    let a = clearframe()
        .env("CLEARFRAME_FAULT", "ffmpeg_kill=20")
        .args(&args)
        .arg("--work")
        .arg(&work)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(1);
    let (r, failed) = failures(&out);
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["video_id"], "bikes");
    // Not `truncated`: that would blame the clip, and a rebuild would never try it again.
    assert_eq!(failed[0]["code"], "decoder_killed", "{r}");
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("SIGKILL") && reason.contains("tries it again"),
        "{reason}"
    );
    assert!(stderr(&a).contains("decoder_killed"), "{}", stderr(&a));
    assert_eq!(
        r["counts"]["clips"]["car"],
        record(&plain)["counts"]["clips"]["car"],
        "{r}"
    );
    // Every frame decoded before the kill is accounted for, emitted or withheld.
    let bikes = &r["counts"]["clips"]["bikes"];
    let accounted = bikes["frames"].as_u64().unwrap() + bikes["withheld"].as_u64().unwrap();
    assert!((1..=20).contains(&accounted), "{r}");

    // SIGTERM, as an operator sends it: ffmpeg (which starts with no signal blocked) catches
    // it and exits 255; the clip fails the same way. (ffmpeg used to inherit ClearFrame's
    // blocked SIGTERM and ignore it.)
    let term = dir.join("term");
    clearframe()
        .env("CLEARFRAME_FAULT", "ffmpeg_term=20")
        .args(&args)
        .arg("--out")
        .arg(&term)
        .assert()
        .code(1);
    let (r, failed) = failures(&term);
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["code"], "decoder_killed", "{r}");
    assert!(
        failed[0]["reason"].as_str().unwrap().contains("exited 255"),
        "{r}"
    );

    // ffmpeg gone from under a running batch (the shell's exit 127, as when its libraries
    // cannot be mapped for want of memory): not the clips' fault either. It used to be
    // `truncated`, and a rebuild never tried those clips again.
    let gone = dir.join("gone-bin");
    std::fs::create_dir(&gone).unwrap();
    let wrapper = gone.join("ffmpeg");
    std::fs::write(&wrapper, "#!/bin/sh\nexec /nonexistent/ffmpeg \"$@\"\n").unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", gone.display(), std::env::var("PATH").unwrap());
    let no_ffmpeg = dir.join("no-ffmpeg");
    clearframe()
        .env("PATH", path)
        .args(&args)
        .arg("--out")
        .arg(&no_ffmpeg)
        .assert()
        .code(1);
    let (r, failed) = failures(&no_ffmpeg);
    assert_eq!(failed.len(), 2, "{r}");
    for f in &failed {
        assert_eq!(f["code"], "decoder_killed", "{r}");
        assert!(
            f["reason"]
                .as_str()
                .unwrap()
                .contains("could not be loaded"),
            "{r}"
        );
    }

    // The next run (nothing killed) redoes bikes only and gives the undisturbed dataset.
    let a = clearframe()
        .args(&args)
        .arg("--work")
        .arg(&work)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(0);
    let said = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
    assert!(said.contains("2 clips, 1 redone"), "{said}");
    assert_same_dataset(&local_files(&plain), &local_files(&out));
}

#[test]
fn a_model_corrupted_on_disk_is_refused_and_the_dataset_stays_as_it_was() {
    let tmp = two_clips();
    let dir = tmp.path();
    let out = dir.join("out");
    let args = run_args(dir, 2);
    clearframe()
        .args(&args)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(0);
    let before = local_files(&out);

    // A copy of the models with one bit flipped in the face verifier.
    let models = dir.join("models");
    std::fs::create_dir(&models).unwrap();
    for e in std::fs::read_dir(crate::common::root().join("models")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, models.join(p.file_name().unwrap())).unwrap();
    }
    let victim = models.join("retinaface_tiny.onnx");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();

    for extra in [&[][..], &["--work", dir.join("work").to_str().unwrap()][..]] {
        let a = clearframe()
            .env("CLEARFRAME_MODELS", &models)
            .args(&args)
            .args(extra)
            .arg("--out")
            .arg(&out)
            .assert()
            .code(2);
        let err = stderr(&a);
        assert!(
            err.contains("retinaface_tiny") && err.contains("blake3"),
            "the model and its hash named: {err}"
        );
        assert_eq!(local_files(&out), before, "the dataset is untouched");
    }
}

/// Runs `steps` (bash) in a private mount namespace (`unshare -Urm`: root there, whoever runs
/// the tests) in which `mnt` is a fresh tmpfs of `size_kib`; the mount is gone when the steps
/// end. `$CF` is the clearframe binary; `step NAME ARGS…` runs it, keeping its exit status,
/// stdout and stderr as `$R/NAME.rc|out|err`; `snap NAME DIR` copies a folder to `$R/NAME`.
fn on_tmpfs(mnt: &Path, size_kib: u64, results: &Path, steps: &str) {
    std::fs::create_dir_all(mnt).unwrap();
    std::fs::create_dir_all(results).unwrap();
    let script = format!(
        r#"set -u
mount -t tmpfs -o size={size_kib}k,mode=0755 tmpfs "$MNT" || {{ echo "cannot mount a tmpfs" >&2; exit 97; }}
step() {{ local name=$1; shift; "$CF" "$@" >"$R/$name.out" 2>"$R/$name.err"; echo $? >"$R/$name.rc"; }}
snap() {{ cp -a "$2" "$R/$1"; }}
{steps}
"#
    );
    let o = Command::new("unshare")
        .args(["-Urm", "bash", "-c", &script])
        .env("CF", assert_cmd::cargo::cargo_bin("clearframe"))
        .env("MNT", mnt)
        .env("R", results)
        .output()
        .expect("unshare (util-linux) runs");
    assert!(
        o.status.success(),
        "the steps ran in a private tmpfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Exit status, stdout and stderr of a step of [`on_tmpfs`].
fn step(results: &Path, name: &str) -> (i32, String, String) {
    let read = |ext: &str| std::fs::read_to_string(results.join(format!("{name}.{ext}"))).unwrap();
    (read("rc").trim().parse().unwrap(), read("out"), read("err"))
}

/// Bytes a folder's files take on a tmpfs (whole pages).
fn pages_kib(files: &BTreeMap<String, Vec<u8>>) -> u64 {
    files
        .values()
        .map(|v| (v.len() as u64).div_ceil(4096) * 4)
        .sum()
}

#[test]
fn a_full_disk_or_a_read_only_folder_stops_the_run_and_the_earlier_version_stays_whole() {
    let tmp = two_clips();
    let dir = tmp.path();
    let (at2, at4) = (run_args(dir, 2), run_args(dir, 4));
    let (ref2, ref4) = (dir.join("ref2"), dir.join("ref4"));
    clearframe()
        .args(&at2)
        .arg("--out")
        .arg(&ref2)
        .assert()
        .code(0);
    clearframe()
        .args(&at4)
        .arg("--out")
        .arg(&ref4)
        .assert()
        .code(0);
    let (ref2, ref4) = (local_files(&ref2), local_files(&ref4));
    // Room for the 2 fps dataset and half the 4 fps one: the 4 fps build runs out of space
    // part-way, beside the version it replaces.
    let size = pages_kib(&ref2) + pages_kib(&ref4) / 2;

    let (mnt, r) = (dir.join("mnt"), dir.join("results"));
    let quote = |args: &[String]| {
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (q2, q4) = (quote(&at2), quote(&at4));
    on_tmpfs(
        &mnt,
        size,
        &r,
        &format!(
            r#"
step first {q2} --out "$MNT/d"; snap first "$MNT/d"
step full_emit {q4} --out "$MNT/d"; snap full_emit "$MNT/d"
step verify_full verify "$MNT/d"
step full_redact {q2} --work "$MNT/w" --out "$R/from-full-work"
mount -o remount,size=65536k "$MNT"
step roomy {q4} --work "$MNT/w" --out "$MNT/d"; snap roomy "$MNT/d"
mount -o remount,ro "$MNT"
step ro_run {q2} --out "$MNT/d"
step ro_work {q2} --work "$MNT/w" --out "$R/from-ro-work"
snap ro "$MNT/d"
"#
        ),
    );

    let (code, _, err) = step(&r, "first");
    assert_eq!(code, 0, "{err}");
    assert_same_files(&ref2, &local_files(&r.join("first")));

    // Out of space under emit: a clear error, exit 2, the earlier version whole.
    let (code, _, err) = step(&r, "full_emit");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("nothing was replaced"), "{err}");
    assert!(
        !err.contains("clip failed"),
        "a full disk is not the clips' fault: {err}"
    );
    let full = local_files(&r.join("full_emit"));
    for (k, v) in &ref2 {
        assert!(full.get(k) == Some(v), "{k} of the earlier version changed");
    }
    for k in full.keys().filter(|k| !ref2.contains_key(*k)) {
        assert!(
            k.starts_with("frames/")
                || k.starts_with("versions/")
                || k == ".clearframe-partial.json",
            "{k}: only the next version's objects are added"
        );
    }
    let (code, out, err) = step(&r, "verify_full");
    assert_eq!(code, 0, "the earlier version verifies: {out}{err}");
    assert!(out.contains("not part of this version"), "{out}");

    // Out of space under redact (the work folder on the full disk): a clear error, exit 2, no
    // dataset written.
    let (code, _, err) = step(&r, "full_redact");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(
        err.matches("No space left on device").count(),
        1,
        "said once: {err}"
    );
    assert!(!r.join("from-full-work/dataset.json").exists());

    // With room again, the next run finishes: the 4 fps dataset, nothing left of the
    // interrupted build.
    let (code, _, err) = step(&r, "roomy");
    assert_eq!(code, 0, "{err}");
    let roomy = local_files(&r.join("roomy"));
    assert_same_dataset(&ref4, &roomy);

    // Read-only: refused with a clear error, before anything else; the dataset as it was.
    for name in ["ro_run", "ro_work"] {
        let (code, _, err) = step(&r, name);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains("Read-only file system"), "{name}: {err}");
    }
    assert!(!r.join("from-ro-work/dataset.json").exists());
    assert_eq!(local_files(&r.join("ro")), roomy);
}

/// Runs clearframe with `args` under a hard address-space limit of `limit_mib` MiB (RLIMIT_AS,
/// set in the child before it starts; ffmpeg inherits it). Returns the exit code and the peak
/// resident memory in KiB (`wait4`'s `ru_maxrss`: the process and the children it waited for).
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4 below, which also gives its rusage"
)]
fn run_limited(args: &[String], limit_mib: u64, log: &Path) -> (i32, u64) {
    use std::os::unix::process::CommandExt;
    let limit = limit_mib * 1024 * 1024;
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("clearframe"));
    cmd.args(args)
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &rl) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = cmd.spawn().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let (mut status, mut usage) = (0i32, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child; status and usage are plain out-parameters.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "{}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "killed by a signal: {status}");
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64)
}

#[test]
fn under_a_hard_memory_limit_a_six_times_longer_clip_needs_no_more_memory() {
    // bikes.mp4 (640x272, 25 fps) made 100 and 600 frames long; every frame processed. A
    // pipeline that held its frames would need 500 x 522 KB = 261 MB more for the long one.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("media")).unwrap();
    let bikes = fixture("media/bikes.mp4");
    let mut lines = Vec::new();
    for frames in [100u32, 600] {
        let name = format!("media/bikes-{frames}.mp4");
        crate::common::ffmpeg(&[
            "-stream_loop",
            "2",
            "-i",
            bikes.to_str().unwrap(),
            "-frames:v",
            &frames.to_string(),
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            dir.join(&name).to_str().unwrap(),
        ]);
        lines.push((frames, clip_line(&format!("b{frames}"), &name).to_string()));
    }
    std::fs::write(dir.join("ledger.jsonl"), grant_line() + "\n").unwrap();
    let mut peaks = Vec::new();
    for (frames, line) in &lines {
        let catalog = dir.join(format!("catalog-{frames}.jsonl"));
        std::fs::write(&catalog, format!("{line}\n")).unwrap();
        let out = dir.join(format!("out-{frames}"));
        let args: Vec<String> = [
            "run",
            "--as-of",
            AS_OF,
            "--fps",
            "25",
            "--catalog",
            catalog.to_str().unwrap(),
            "--ledger",
            dir.join("ledger.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        // 1 GiB of address space for everything (models, threads' stacks, ffmpeg): about four
        // times what the pipeline maps on this machine's two cores.
        let log = dir.join(format!("run-{frames}.log"));
        let (code, peak_kib) = run_limited(&args, 1024, &log);
        let err = std::fs::read_to_string(&log).unwrap();
        assert_eq!(code, 0, "{err}");
        let r = record(&out);
        let done = r["frames"].as_u64().unwrap() + r["withheld"].as_array().unwrap().len() as u64;
        assert_eq!(done, u64::from(*frames), "{r}");
        println!(
            "{frames} frames: peak RSS {:.1} MiB",
            peak_kib as f64 / 1024.0
        );
        peaks.push(peak_kib);
    }
    let growth_kib = peaks[1].saturating_sub(peaks[0]);
    let held_kib = 500 * 640 * 272 * 3 / 1024;
    assert!(
        growth_kib * 10 < held_kib,
        "peak RSS grew {growth_kib} KiB from 100 to 600 frames: a tenth of holding the 500 frames ({held_kib} KiB) is the bound"
    );
}
