"""Every third-party package the code imports is declared in pyproject.toml, runtime code uses runtime ones.

Imports are read with `ast` (inside functions too). A module is mapped to its distribution by the installed
metadata (`importlib.metadata.packages_distributions`), with namespace packages (`odc.geo`, `odc.stac`) mapped
by their second part. Library code (`pipeline`, `anysat`, `modelops`, `jobs`) may use only `dependencies`;
`infra` and `tests` may also use the `dev` extra.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN = {"pipeline", "anysat", "modelops", "jobs", "infra", "tests", "bench"}
NAMESPACES = {"odc.geo": "odc-geo", "odc.stac": "odc-stac"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, set[str]]:
    """Distribution names per group: `runtime` and each extra."""
    meta = tomllib.loads(pyproject.read_text())["project"]
    name = lambda spec: _norm(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0])  # noqa: E731
    groups = {"runtime": {name(s) for s in meta["dependencies"]}}
    groups |= {k: {name(s) for s in v} for k, v in meta.get("optional-dependencies", {}).items()}
    return groups


def third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Imported third-party module names (`odc.geo` for namespaces, else the top level) -> files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else []  # fmt: skip
            for full in names:
                top = full.split(".")[0]
                if top in OWN or top in sys.stdlib_module_names or top == "__future__":
                    continue
                key = ".".join(full.split(".")[:2]) if top == "odc" else top
                found.setdefault(key, set()).add(str(path.relative_to(folder.parent)))
    return found


def distributions(module: str) -> list[str]:
    """Installed distributions providing `module` (several for a shared namespace such as `pystac`)."""
    if module in NAMESPACES:
        return [NAMESPACES[module]]
    return sorted({_norm(d) for d in packages_distributions().get(module, [])})


def undeclared(folders: list[Path], allowed: set[str]) -> list[str]:
    """`module (distributions) in file` for each import none of whose distributions is in `allowed`."""
    bad = []
    for folder in folders:
        for module, files in sorted(third_party_imports(folder).items()):
            dists = distributions(module)
            if not set(dists) & allowed:
                bad.append(f"{module} ({', '.join(dists) or 'not installed'}) in {sorted(files)[0]}")
    return bad


def test_library_code_imports_only_runtime_dependencies() -> None:
    groups = declared()
    folders = [ROOT / p for p in ("pipeline", "anysat", "modelops", "jobs")]
    assert undeclared(folders, groups["runtime"]) == []


def test_stack_and_tests_import_only_declared_packages() -> None:
    groups = declared()
    assert undeclared([ROOT / "infra", ROOT / "tests"], groups["runtime"] | groups["dev"]) == []


def test_test_tools_are_not_runtime_dependencies() -> None:
    runtime = declared()["runtime"]
    assert not runtime & {"pytest", "pytest-timeout", "jsonschema", "moto", "rustac", "boto3", "psutil"}


def test_the_check_fires_on_a_planted_import(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("import yaml\ndef f():\n    import jsonschema\n    from odc.geo import x\n")
    assert undeclared([tmp_path / "pkg"], {"pyyaml", "odc-geo"}) == ["jsonschema (jsonschema) in pkg/m.py"]
    assert undeclared([tmp_path / "pkg"], {"pyyaml", "jsonschema"}) == ["odc.geo (odc-geo) in pkg/m.py"]
