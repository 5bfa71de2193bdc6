"""Rebuild the JSON schemas in this folder (run by hand; the tests only read the committed files).

Kubernetes kinds come from the strict schemas shipped in the `kubernetes-validate` wheel (Apache-2.0): each kind's
file refers into one shared `_definitions.json`; here each kind is flattened into one self-contained file holding
only the definitions it reaches. KubeRay kinds come from the `openAPIV3Schema` of the KubeRay CRDs (Apache-2.0)
of one release, converted to JSON schema (see `crd_to_json_schema`).

Usage:
    pip download --no-deps kubernetes-validate==1.37.0 && unzip kubernetes_validate-1.37.0-*.whl -d kv
    git -C kuberay show v1.7.0:ray-operator/config/crd/bases/ray.io_rayclusters.yaml > rayclusters.yaml  # rayjobs, raycronjobs
    python infra/schemas/build.py --k8s kv/kubernetes_validate/kubernetes-json-schema/v1.37.0-local-strict \\
        --crd rayclusters.yaml --crd rayjobs.yaml --crd raycronjobs.yaml
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
K8S_KINDS = ("deployment-apps-v1", "service-v1", "cronjob-batch-v1", "configmap-v1", "serviceaccount-v1",
             "role-rbac-v1", "rolebinding-rbac-v1")  # fmt: skip
_REF = re.compile(r"^/api/_definitions\.json#/\$defs/(.+)$|^#/\$defs/(.+)$")


def _refs(node: Any) -> set[str]:
    """Names of every `$defs` entry referenced anywhere inside `node`."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and (m := _REF.match(ref)):
            found.add(m.group(1) or m.group(2))
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _local_refs(node: Any) -> Any:
    """A copy of `node` whose `/api/_definitions.json#/$defs/X` references point at its own `#/$defs/X`."""
    if isinstance(node, dict):
        out = {k: _local_refs(v) for k, v in node.items()}
        if isinstance(out.get("$ref"), str) and (m := _REF.match(out["$ref"])):
            out["$ref"] = f"#/$defs/{m.group(1) or m.group(2)}"
        return out
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


def flatten_kind(kind: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """One self-contained schema: the kind plus the transitive closure of the definitions it references."""
    needed: set[str] = set()
    todo = _refs(kind)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo |= _refs(definitions[name]) - needed
    out = {k: v for k, v in _local_refs(kind).items() if k != "$id"}
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["$defs"] = {name: _local_refs(definitions[name]) for name in sorted(needed)}
    return out


def crd_to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (structural CRD schema) → JSON schema, as strict as `kubectl apply --validate=strict`.

    `nullable: true` adds `null` to the type; `x-kubernetes-int-or-string` becomes integer-or-string; an object
    with `properties` and neither `additionalProperties` nor `x-kubernetes-preserve-unknown-fields` rejects
    unknown fields (the API server's strict field validation does). Other `x-kubernetes-*` keys (CEL rules, list
    types) are dropped: JSON schema cannot evaluate them.
    """
    if isinstance(node, list):
        return [crd_to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: crd_to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
        out["additionalProperties"] = False
    return out


def build_crd(crd: dict[str, Any], version: str = "v1") -> tuple[str, dict[str, Any]]:
    """File name and JSON schema of one CRD version, with apiVersion/kind pinned and metadata required."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = crd_to_json_schema(served["schema"]["openAPIV3Schema"])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return f"{kind.lower()}-{group.split('.')[0]}-{version}.json", schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k8s", type=Path, required=True, help="kubernetes-validate's <version>-local-strict dir")
    parser.add_argument("--crd", type=Path, action="append", default=[], help="a KubeRay CRD YAML file")
    args = parser.parse_args()
    definitions = json.loads((args.k8s / "_definitions.json").read_text())["$defs"]
    (HERE / "k8s").mkdir(exist_ok=True)
    for name in K8S_KINDS:
        kind = json.loads((args.k8s / f"{name}.json").read_text())
        (HERE / "k8s" / f"{name}.json").write_text(json.dumps(flatten_kind(kind, definitions), sort_keys=True) + "\n")
    (HERE / "kuberay").mkdir(exist_ok=True)
    for path in args.crd:
        name, schema = build_crd(yaml.safe_load(path.read_text()))
        (HERE / "kuberay" / name).write_text(json.dumps(schema, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
