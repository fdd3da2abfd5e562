"""Validates the deployment manifests with the engines' own client models (no cluster needed).

- deploy/kubernetes/*.yaml: each document is deserialised into the Kubernetes Python client's
  models (V1Job ...) with client-side validation, serialised back, and must come back unchanged
  (a misspelt or unknown field would be dropped, and fails here); the shard Job must be Indexed,
  with completions == parallelism == the N of its `--shard env/N`.
- deploy/aws-batch/job-definition.json: validated against botocore's model of the AWS Batch API
  (RegisterJobDefinition's input shape); its command must take the shard from a parameter that
  is `env/N`.

    python deploy/check_manifests.py [DEPLOY_DIR]      prints one line per check, exit 1 on any problem
"""

import json
import pathlib
import sys

import botocore.session
import botocore.validate
import kubernetes.client
import yaml


class _Response:
    def __init__(self, obj):
        self.data = json.dumps(obj)


def check_kubernetes(path, problems):
    api = kubernetes.client.ApiClient()
    for doc in yaml.safe_load_all(path.read_text()):
        before = len(problems)
        kind = doc.get("kind")
        model = getattr(kubernetes.client, f"V1{kind}", None)
        if model is None:
            problems.append(f"{path.name}: unknown kind {kind!r}")
            continue
        obj = api.deserialize(_Response(doc), f"V1{kind}")
        back = api.sanitize_for_serialization(obj)
        if back != doc:
            problems.append(f"{path.name}: {kind} does not round-trip through V1{kind} (unknown or misspelt fields)")
        name = doc["metadata"]["name"]
        if kind == "Job" and doc["spec"].get("completionMode") == "Indexed":
            spec = doc["spec"]
            args = spec["template"]["spec"]["containers"][0]["args"]
            shard = [a for a in args if a.startswith("--shard=")]
            n = spec.get("completions")
            if shard != [f"--shard=env/{n}"] or spec.get("parallelism") != n:
                problems.append(f"{path.name}: {name}: completions {n}, parallelism {spec.get('parallelism')}, {shard}")
            if spec["template"]["spec"].get("restartPolicy") != "Never":
                problems.append(f"{path.name}: {name}: an Indexed Job's pods should not restart in place")
        if len(problems) == before:
            print(f"ok: {path.name}: {kind} {name} is a valid V1{kind}")


def check_batch(path, problems):
    definition = json.loads(path.read_text())
    model = botocore.session.get_session().get_service_model("batch")
    shape = model.operation_model("RegisterJobDefinition").input_shape
    try:
        botocore.validate.validate_parameters(definition, shape)
    except botocore.exceptions.ParamValidationError as e:
        problems.append(f"{path.name}: {e}")
        return
    command = definition["containerProperties"]["command"]
    params = definition.get("parameters", {})
    refs = [command[i + 1] for i, c in enumerate(command[:-1]) if c == "--shard"]
    if len(refs) != 1 or not refs[0].startswith("Ref::") or not params.get(refs[0][5:], "").startswith("env/"):
        problems.append(f"{path.name}: the command must take --shard from a parameter env/N")
    print(f"ok: {path.name}: a valid RegisterJobDefinition input for {definition['jobDefinitionName']}")


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent)
    problems = []
    for path in sorted((root / "kubernetes").glob("*.yaml")):
        check_kubernetes(path, problems)
    check_batch(root / "aws-batch" / "job-definition.json", problems)
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
