"""The cluster manifests in infra/: schema-valid offline, one image, the local job commands, no secret values.

Schemas are the committed files in infra/schemas/ (Kubernetes and KubeRay, see its README) and the Ray cluster
launcher's schema shipped inside the installed ray package; nothing is fetched.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from pipeline.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
SCHEMAS = ROOT / "infra" / "schemas"
LAUNCHER = ROOT / "infra" / "ray" / "cluster.yaml"
SCHEMA_FILES = {
    ("apps/v1", "Deployment"): "k8s/deployment-apps-v1.json",
    ("v1", "Service"): "k8s/service-v1.json",
    ("v1", "ConfigMap"): "k8s/configmap-v1.json",
    ("v1", "ServiceAccount"): "k8s/serviceaccount-v1.json",
    ("batch/v1", "CronJob"): "k8s/cronjob-batch-v1.json",
    ("rbac.authorization.k8s.io/v1", "Role"): "k8s/role-rbac-v1.json",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "k8s/rolebinding-rbac-v1.json",
    ("ray.io/v1", "RayCluster"): "kuberay/raycluster-ray-v1.json",
    ("ray.io/v1", "RayJob"): "kuberay/rayjob-ray-v1.json",
    ("ray.io/v1", "RayCronJob"): "kuberay/raycronjob-ray-v1.json",
}


def _manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object in infra/k8s (optional/ too), plus the RayJob templates embedded in ConfigMaps."""
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        name = path.relative_to(K8S).as_posix()
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            yield f"{name}#{i}:{doc['kind']}", doc
            if doc["kind"] == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    if key.endswith(".yaml"):
                        yield f"{name}#{i}:{key}", yaml.safe_load(text)


MANIFESTS = dict(_manifests())


def _validator(doc: dict[str, Any]) -> jsonschema.Draft202012Validator:
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in SCHEMA_FILES, f"no committed schema for {key}; add it to infra/schemas (see its README)"
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / SCHEMA_FILES[key]).read_text()))


def _launcher_schema() -> dict[str, Any]:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _errors(validator: jsonschema.Draft202012Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_validates_against_its_schema(name: str) -> None:
    doc = MANIFESTS[name]
    assert _errors(_validator(doc), doc) == []


def test_every_kind_is_present_and_kustomization_lists_the_standing_manifests() -> None:
    kinds = {doc["kind"] for doc in MANIFESTS.values()}
    assert {"RayCluster", "RayJob", "CronJob", "Deployment", "Service", "RayCronJob"} <= kinds
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    standing = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    runs = {p for p in standing if all(d["kind"] == "RayJob" for d in yaml.safe_load_all((K8S / p).read_text()))}
    assert set(kustomization["resources"]) == standing - runs and runs == {"rayjob-pretrain.yaml"}


def test_ray_launcher_config_validates_against_rays_own_schema() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    jsonschema.validate(config, _launcher_schema())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert any(t["resources"].get("CPU", 0) >= 1 and "GPU" not in t["resources"] for t in types.values())
    torch_pin, project = (next(i for i, c in enumerate(config["setup_commands"]) if pattern in c)
                          for pattern in ("torch==", "pip install -e"))  # fmt: skip
    assert torch_pin < project


@pytest.mark.parametrize(
    ("name", "mutate", "expected"),
    [
        ("raycluster.yaml#0:RayCluster", lambda d: d["spec"].pop("headGroupSpec"), "headGroupSpec"),
        ("raycluster.yaml#0:RayCluster",
         lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplica=3), "maxReplica"),
        ("ingest-schedule.yaml#4:CronJob", lambda d: d["spec"].pop("schedule"), "schedule"),
        ("mlflow.yaml#0:Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "name"),
        ("mlflow.yaml#1:Service", lambda d: d["spec"]["ports"][0].update(port="http"), "http"),
        ("rayjob-pretrain.yaml#0:RayJob", lambda d: d["spec"].update(backoffLimit="once"), "once"),
    ],
)  # fmt: skip
def test_a_broken_manifest_fails_validation(name: str, mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(MANIFESTS[name])
    mutate(doc)
    errors = _errors(_validator(doc), doc)
    assert errors and any(expected in e for e in errors), errors


def test_a_broken_launcher_config_fails_validation() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    del config["provider"]
    with pytest.raises(jsonschema.ValidationError, match="provider"):
        jsonschema.validate(config, _launcher_schema())


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _containers(value)


def test_one_project_image_built_with_the_pinned_torch_and_ray() -> None:
    images = {c["image"] for doc in MANIFESTS.values() for c in _containers(doc)}
    images.add(yaml.safe_load(LAUNCHER.read_text())["docker"]["image"])
    assert len(images) == 1, f"expected the one project image everywhere, found {sorted(images)}"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch=="))
    ray_version = next(d for d in deps if d.startswith("ray[")).split("==")[1]
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert dockerfile.index(f"pip install {torch_pin}") < dockerfile.index("pip install .")
    raycluster = MANIFESTS["raycluster.yaml#0:RayCluster"]
    assert raycluster["spec"]["rayVersion"] == ray_version


def _job_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every `python jobs/<name>.py ...` command in the manifests and the launcher config."""
    for name, doc in MANIFESTS.items():
        if doc["kind"] in ("RayJob", "RayCronJob"):
            spec = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
            yield name, shlex.split(spec["entrypoint"])
    for type_name, node_type in yaml.safe_load(LAUNCHER.read_text())["available_node_types"].items():
        for command in node_type.get("initialization_commands", []):
            if "jobs/" in command:
                inner = re.search(r'bash -lc "(.*?)"', command)
                assert inner, f"expected a docker exec ... bash -lc \"...\" command, got {command}"
                argv = shlex.split(inner.group(1))
                yield f"cluster.yaml:{type_name}", argv[argv.index("--") + 1 :]


JOB_COMMANDS = dict(_job_commands())


JOB_CONFIGS = {"jobs/ingest.py": ("pipeline.ingest.config", "IngestConfig"),
               "jobs/pretrain.py": ("modelops.pretrain_config", "PretrainConfig")}


def _job_config_class(script: str) -> type:
    """The typed config class a job loads (library code, imported like any module)."""
    module, name = JOB_CONFIGS[script]
    return getattr(importlib.import_module(module), name)


def _job_flags(script: str) -> set[str]:
    """The options a job accepts, from its own `--help`."""
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", out.stdout))


def test_the_local_commands_are_what_the_docs_and_makefile_run() -> None:
    local = (ROOT / "Makefile").read_text() + (ROOT / "README.md").read_text()
    assert {a[1] for a in JOB_COMMANDS.values()} == {"jobs/ingest.py", "jobs/pretrain.py"}
    for argv in JOB_COMMANDS.values():  # every job the cluster runs exists and is run the same way locally
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} is run by the cluster manifests but does not exist"
        assert f"python {argv[1]} --config" in local, f"{argv[1]} is run differently on the cluster than locally"


@pytest.mark.parametrize("where", sorted(JOB_COMMANDS))
def test_job_command_is_the_local_command(where: str) -> None:
    argv = JOB_COMMANDS[where]
    assert argv[0] == "python" and re.fullmatch(r"jobs/\w+\.py", argv[1]), argv
    assert (ROOT / argv[1]).is_file(), f"{where} runs {argv[1]}, which does not exist (renamed?)"
    config = argv[argv.index("--config") + 1]
    assert config.startswith("configs/") and (ROOT / config).is_file(), f"{where}: {config} is not in configs/"
    # the overrides are real keys of the job's own config class, loaded as the job loads them
    env = MANIFESTS["env-configmap.yaml#0:ConfigMap"]["data"]
    overrides = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], argv[i + 1])
                 for i, a in enumerate(argv) if a == "--set"]  # fmt: skip
    loaded = to_dict(load_config(_job_config_class(argv[1]), ROOT / config, overrides))
    locations = [v for k, v in _strings(loaded) if k in ("store", "url", "storage")]
    assert locations and all(v.startswith("s3://") for v in locations), f"{where}: {locations} not all on s3://"
    used = {a.split("=")[0] for a in argv[2:] if a.startswith("--")}
    missing = used - _job_flags(argv[1])
    assert not missing, f"{where} passes {sorted(missing)}, which {argv[1]} does not accept"


def _strings(node: Any) -> Iterator[tuple[str, str]]:
    """(key, value) of every scalar in a YAML tree (key of the innermost mapping or list owner)."""
    stack: list[tuple[str, Any]] = [("", node)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("name"), str) and "value" in value:  # an env var given inline
                stack.append((value["name"], value["value"]))
            stack += [(str(k), v) for k, v in value.items() if not ("name" in value and k == "value")]
        elif isinstance(value, list):
            stack += [(key, v) for v in value]
        elif value is not None:
            yield key, str(value)


SECRETISH = re.compile(r"(secret|password|passwd|token|access_key|api_key|credential)", re.I)
SECRET_VALUES = re.compile(r"AKIA[0-9A-Z]{16}|://[^/\s:@]+:[^/\s@]+@|BEGIN [A-Z ]*PRIVATE KEY|sig=|sv=20\d\d")


def test_no_secret_values_in_any_yaml() -> None:
    files = sorted(K8S.rglob("*.yaml")) + [LAUNCHER]
    found = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert not doc or doc.get("kind") != "Secret", f"{path.name} defines a Secret; create Secrets by hand"
            for key, value in _strings(doc):
                if SECRETISH.search(key) and key not in ("secretName",) or SECRET_VALUES.search(value):
                    found.append(f"{path.name}: {key}={value[:40]}")
    assert found == []
    deployment = MANIFESTS["mlflow.yaml#0:Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "anysat-mlflow-db"


def test_the_secret_check_catches_an_inline_secret() -> None:
    leaky = {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}], "uri": "postgresql://u:pw@db:5432/m"}
    hits = [(k, v) for k, v in _strings(leaky) if SECRETISH.search(k) or SECRET_VALUES.search(v)]
    assert {k for k, _ in hits} == {"AWS_SECRET_ACCESS_KEY", "uri"}


def test_both_schedules_run_the_same_rayjob_spec() -> None:
    cron_template = MANIFESTS["ingest-schedule.yaml#3:rayjob.yaml"]["spec"]
    raycronjob = MANIFESTS["optional/raycronjob-ingest.yaml#0:RayCronJob"]["spec"]
    cronjob = MANIFESTS["ingest-schedule.yaml#4:CronJob"]["spec"]
    assert raycronjob["jobTemplate"] == cron_template
    assert (raycronjob["schedule"], raycronjob["timeZone"]) == (cronjob["schedule"], cronjob["timeZone"])
