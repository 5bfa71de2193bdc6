"""The layout's rules, checked on the source: who may import whom, no import circle, no oversized file.

Read statically with `ast` (every `import`/`from … import`, including imports inside functions), so a rule
broken on a branch that tests never execute is still caught. Each rule is a function returning its
violations; the last test plants a defect of each kind in a scratch tree and sees it reported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("anysat", "pipeline", "modelops")
MAX_LINES = 360
MAX_JOB_LINES = 100
# pipeline's layers, lowest first: a module may import its own package and the layers below, never above or beside
PIPELINE_LAYERS = {"pipeline.errors": 0, "pipeline.atomic": 0, "pipeline.config": 0, "pipeline.times": 0,
                   "pipeline.progress": 0, "pipeline.config_reference": 0,
                   "pipeline.logs": 0, "pipeline.transient": 0, "pipeline.s3_retry": 0, "pipeline.catalog": 1,
                   "pipeline.store": 2, "pipeline.ingest": 3, "pipeline.load": 3}  # fmt: skip
ANYSAT_BANNED = ("mlflow", "ray", "zarr", "fsspec", "s3fs", "pipeline", "modelops", "sklearn", "pandas")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute module names imported anywhere in the file (relative imports resolved)."""
    me = _module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}  # fmt: skip
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports exist for annotations only, never at run time
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")  # fmt: skip


def _sources(root: Path) -> list[Path]:
    return [p for pkg in PACKAGES if (root / pkg).is_dir() for p in sorted((root / pkg).rglob("*.py"))]


def circles(root: Path = ROOT) -> list[str]:
    """Import circles among the project's modules, as `a -> b -> a`."""
    files = {_module_name(p, root): p for p in _sources(root)}
    g = {m: {i for i in imports_of(p, root) if i in files and i != m} for m, p in files.items()}
    state: dict[str, int] = {}
    found: list[str] = []

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in sorted(g[m]):
            if state.get(n) == 1:
                found.append(" -> ".join([*trail[trail.index(n):], n]))
            elif n not in state:
                visit(n, [*trail, n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def _layer(module: str) -> int | None:
    for prefix, layer in PIPELINE_LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def layer_violations(root: Path = ROOT) -> list[str]:
    """anysat importing beyond torch; pipeline importing a model, a job, or a layer above or beside its own."""
    bad: list[str] = []
    for path in sorted((root / "anysat").rglob("*.py")):
        bad += [f"{_module_name(path, root)} imports {i}" for i in sorted(imports_of(path, root))
                if i.split(".")[0] in ANYSAT_BANNED]  # fmt: skip
    for path in sorted((root / "pipeline").rglob("*.py")):
        me = _module_name(path, root)
        mine = _layer(me)
        for other in sorted(imports_of(path, root)):
            if other.split(".")[0] in ("anysat", "modelops", "jobs"):
                bad.append(f"{me} imports {other}")
                continue
            theirs = _layer(other)
            if mine is None or theirs is None:
                continue
            same_package = mine > 0 and other.split(".")[1] == me.split(".")[1]
            if not (theirs < mine or same_package or theirs == mine == 0):
                bad.append(f"{me} (layer {mine}) imports {other} (layer {theirs})")
    return bad


def job_violations(root: Path = ROOT) -> list[str]:
    """A job importing another job, a library importing a job, or a job that is not thin."""
    jobs = {p.stem for p in (root / "jobs").glob("*.py")}
    bad = []
    for path in sorted((root / "jobs").glob("*.py")):
        bad += [f"jobs/{path.name} imports job {i}" for i in sorted(imports_of(path, root))
                if i.split(".")[0] in jobs or i == "jobs" or i.startswith("jobs.")]  # fmt: skip
        if (n := len(path.read_text().splitlines())) > MAX_JOB_LINES:
            bad.append(f"jobs/{path.name} has {n} lines (at most {MAX_JOB_LINES}: logic belongs in a library)")
    for path in _sources(root):
        bad += [f"{path.relative_to(root)} imports {i}" for i in imports_of(path, root)
                if i == "jobs" or i.startswith("jobs.")]  # fmt: skip
    return bad


def oversized(root: Path = ROOT) -> list[str]:
    big = []
    for folder in (*PACKAGES, "jobs", "infra", "bench", "tests"):
        for path in sorted((root / folder).rglob("*.py")) if (root / folder).is_dir() else []:
            if (n := len(path.read_text().splitlines())) > MAX_LINES:
                big.append(f"{path.relative_to(root)}: {n} lines")
    return big


def test_no_import_circle() -> None:
    assert circles() == []


def test_layers_import_only_downwards_and_anysat_is_torch_only() -> None:
    assert layer_violations() == []


def test_jobs_are_thin_and_import_no_job() -> None:
    assert job_violations() == []


def test_no_oversized_file() -> None:
    assert oversized() == [], f"files over {MAX_LINES} lines"


def test_each_rule_fires_on_a_planted_defect(tmp_path: Path) -> None:
    def write(rel: str, text: str) -> None:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    for pkg in ("anysat", "pipeline", "pipeline/store", "pipeline/ingest", "modelops", "jobs"):
        write(f"{pkg}/__init__.py", "")
    write("pipeline/store/a.py", "def f():\n    from pipeline.ingest import b\n")  # upward, inside a function
    write("pipeline/ingest/b.py", "from pipeline.store import a\n")  # with the line above: a circle
    write("anysat/m.py", "import mlflow\n")
    write("jobs/x.py", "import y\n")
    write("jobs/y.py", "\n" * (MAX_JOB_LINES + 1))
    write("modelops/big.py", "\n" * (MAX_LINES + 1))
    assert circles(tmp_path) == ["pipeline.ingest.b -> pipeline.store.a -> pipeline.ingest.b"]
    assert layer_violations(tmp_path) == ["anysat.m imports mlflow",
                                          "pipeline.store.a (layer 2) imports pipeline.ingest (layer 3)",
                                          "pipeline.store.a (layer 2) imports pipeline.ingest.b (layer 3)"]
    assert job_violations(tmp_path) == ["jobs/x.py imports job y", f"jobs/y.py has {MAX_JOB_LINES + 1} lines "
                                        f"(at most {MAX_JOB_LINES}: logic belongs in a library)"]  # fmt: skip
    assert oversized(tmp_path) == [f"modelops/big.py: {MAX_LINES + 1} lines"]
