"""A ClearFrame nightly rebuild on a Ray cluster.

One Ray task per shard runs `clearframe run ... --work W --shard I/N` against the shared work
location (S3 on a real cluster); a failed shard is retried by Ray (a retried shard redoes only its
own unfinished clips: every finished clip's record is already in W). When every shard is done, the
driver runs `clearframe emit --work W --out D`, which merges the shards into the dataset a single
process would have written, byte for byte.

    python deploy/ray/driver.py --address auto --shards 8 --work s3://work/nightly \\
        --out s3://datasets/nightly [--clearframe /usr/local/bin/clearframe] \\
        [--store-arg=--s3-endpoint=http://...] -- --catalog C --ledger L --as-of T [--fps N ...]

Arguments after `--` go to every shard's `clearframe run`. `--store-arg` (repeatable) goes to
both `run` and `emit`. The environment (credentials, ORT_DYLIB_PATH, CLEARFRAME_*) is passed on
to the tasks. Exit status: emit's (0, or 1 when the dataset lists failed clips), or 2 when a shard
failed for good.
"""

import argparse
import os
import subprocess
import sys

import ray


@ray.remote(num_cpus=1, max_retries=3, retry_exceptions=True)
def shard(binary, run_args, store_args, work, index, count, env):
    cmd = [binary, "run", *run_args, *store_args, "--work", work, "--shard", f"{index}/{count}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    # 0: done; 1: done, some clips failed (recorded, reported by emit). Anything else is retried.
    if done.returncode not in (0, 1):
        raise RuntimeError(
            f"shard {index}/{count} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    summary = next((l for l in done.stdout.splitlines() if l.startswith("work folder")), "")
    return {
        "shard": f"{index}/{count}",
        "exit": done.returncode,
        "node": ray.get_runtime_context().get_node_id(),
        "summary": summary,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default="auto")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clearframe", default="clearframe")
    p.add_argument("--store-arg", action="append", default=[])
    p.add_argument("run_args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    run_args = a.run_args[1:] if a.run_args[:1] == ["--"] else a.run_args
    if a.shards < 1:
        p.error("--shards must be at least 1")
    env = dict(os.environ)
    ray.init(address=a.address, log_to_driver=False)
    refs = [
        shard.remote(a.clearframe, run_args, a.store_arg, a.work, i, a.shards, env)
        for i in range(a.shards)
    ]
    try:
        results = ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        print(f"driver: a shard failed for good: {e}", file=sys.stderr)
        return 2
    nodes = sorted({r["node"] for r in results})
    for r in results:
        print(f"shard {r['shard']} on node {r['node'][:8]}: exit {r['exit']}; {r['summary']}")
    print(f"driver: {len(results)} shards on {len(nodes)} node(s); merging")
    sys.stdout.flush()
    emit = subprocess.run(
        [a.clearframe, "emit", "--work", a.work, "--out", a.out, *a.store_arg], env=env
    )
    return emit.returncode


if __name__ == "__main__":
    sys.exit(main())
