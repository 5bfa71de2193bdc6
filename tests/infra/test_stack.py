"""The local stack through its real servers: STAC search and paging, S3 round trip, MLflow, Ray jobs, `down`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from shapely.geometry import box, shape

from infra.local.services import ray_temp_dir, server_temp_dir
from infra.local.stack import LocalStack, StackConfig
from pipeline.catalog.search import StacQuery, open_client, search_items

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]


def _items(catalog_files: tuple[Path, ...], collection: str) -> list[dict]:
    for path in catalog_files:
        if path.name.endswith(".ndjson") and path.parent.name == collection:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    raise AssertionError(f"no items file for {collection} among {catalog_files}")


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_search_by_bbox_datetime_and_cloud_cover_returns_exactly_the_expected_items(
    stack_env: dict[str, str], catalog_files: tuple[Path, ...]
) -> None:
    items = _items(catalog_files, "sentinel-2-l2a")
    covers = sorted({it["properties"]["eo:cloud_cover"] for it in items})
    assert len(covers) >= 2, "the sample catalog needs items on both sides of a cloud-cover threshold"
    threshold = covers[0]
    # An area around the whole collection, a time window excluding the last acquisition.
    union = [shape(it["geometry"]) for it in items]
    west = min(g.bounds[0] for g in union) - 0.01
    south = min(g.bounds[1] for g in union) - 0.01
    east = max(g.bounds[2] for g in union) + 0.01
    north = max(g.bounds[3] for g in union) + 0.01
    times = sorted(_parse(it["properties"]["datetime"]) for it in items)
    start, end = times[0], times[-2]
    query_box = (west, south, (west + east) / 2 + 5.0, north)  # cuts the area, keeps some items out
    expected = {
        it["id"]
        for it in items
        if shape(it["geometry"]).intersects(box(*query_box))
        and start <= _parse(it["properties"]["datetime"]) <= end
        and it["properties"]["eo:cloud_cover"] <= threshold
    }
    assert 0 < len(expected) < len(items)
    query = StacQuery(url=stack_env["STAC_API_URL"], collections=("sentinel-2-l2a",), bbox=query_box,
                      datetime=f"{start.isoformat()}/{end.isoformat()}", max_cloud_cover=threshold, page_size=2)
    found = [it.id for it in search_items(query)]
    assert sorted(found) == sorted(expected)
    assert len(found) == len(set(found))


def test_paging_with_a_page_smaller_than_the_result(stack_env: dict[str, str], catalog_files) -> None:
    n = len(_items(catalog_files, "landsat-c2-l2"))
    client = open_client(stack_env["STAC_API_URL"])
    pages = list(client.search(collections=["landsat-c2-l2"], limit=10).pages())
    assert len(pages) == -(-n // 10)
    ids = [it.id for page in pages for it in page.items]
    assert len(ids) == len(set(ids)) == n
    via_ours = search_items(StacQuery(url=stack_env["STAC_API_URL"], collections=("landsat-c2-l2",), page_size=7))
    assert sorted(it.id for it in via_ours) == sorted(ids)


def test_s3_object_round_trip_is_byte_identical(stack_env: dict[str, str]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(key=stack_env["AWS_ACCESS_KEY_ID"], secret=stack_env["AWS_SECRET_ACCESS_KEY"],
                           endpoint_url=stack_env["AWS_ENDPOINT_URL"])  # fmt: skip
    payload = (ROOT / "data/samples/neon-aerial/OSBS_029.tif").read_bytes()
    key = f"{stack_env['ANYSAT_STORE_URL']}/tests/{uuid.uuid4().hex}.tif"
    with fs.open(key, "wb") as f:
        f.write(payload)
    fs.invalidate_cache()
    with fs.open(key, "rb") as f:
        assert f.read() == payload
    assert fs.info(key)["size"] == len(payload)


def test_mlflow_run_reads_back_through_the_client(stack_env: dict[str, str], tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = stack_env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(f"stack-test-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id, run_name="round-trip")
    client.log_param(run.info.run_id, "size", "tiny")
    for step, value in enumerate([1.0, 0.5, 0.25]):
        client.log_metric(run.info.run_id, "loss", value, step=step)
    note = tmp_path / "note.txt"
    note.write_text("artifact through the server's proxy to the S3 store")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)

    back = MlflowClient(tracking_uri=uri).get_run(run.info.run_id)
    assert back.data.params == {"size": "tiny"}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert back.info.status == "FINISHED"
    mlflow.set_tracking_uri(uri)
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="note.txt",
                                                dst_path=str(tmp_path / "dl"))  # fmt: skip
    assert Path(local).read_text() == note.read_text()


def test_ray_job_submit_runs_a_script_on_the_local_head(stack_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(
        "import ray\nray.init()\n"
        "@ray.remote\ndef square(x):\n    return x * x\n"
        "print('squares', sum(ray.get([square.remote(i) for i in range(5)])))\n"
    )
    env = {**stack_env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", stack_env["RAY_ADDRESS"],
         "--working-dir", str(tmp_path), "--", "python", "job.py"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "squares 30" in out.stdout


def test_servers_talk_only_on_loopback(local_stack: LocalStack, stack_env: dict[str, str]) -> None:
    open_client(stack_env["STAC_API_URL"])  # make some traffic first
    conns = []
    for pid in local_stack.pids():
        try:
            conns += psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
    assert conns, "expected the servers to hold sockets"
    for conn in conns:
        assert conn.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1"), conn
        if conn.raddr:
            assert conn.raddr.ip in ("127.0.0.1", "::ffff:127.0.0.1"), conn


def test_up_is_idempotent_and_down_leaves_no_process(tmp_path: Path, catalog_files) -> None:
    stack = LocalStack(StackConfig(state_dir=tmp_path / "stack", stac_hrefs=catalog_files[:2],
                                   services=("s3", "stac", "mlflow", "ray")))  # fmt: skip
    try:
        env = stack.up()
        pids = stack.pids()
        leaders = {name: s["pid"] for name, s in stack.status().items()}
        assert set(leaders) == {"s3", "stac", "mlflow", "ray"}
        assert all(s["healthy"] for s in stack.status().values())
        assert stack.up() == env  # idempotent: same servers, same ports
        assert {name: s["pid"] for name, s in stack.status().items()} == leaders
        assert (tmp_path / "stack" / "env").read_text().count("export ") == len(env)
        temp_dirs = [d for d in (ray_temp_dir(tmp_path / "stack"), server_temp_dir(tmp_path / "stack")) if d]
        assert all(d.is_dir() for d in temp_dirs)
    finally:
        stack.down()
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left behind: {alive}"
    assert not (tmp_path / "stack" / "state.json").exists()
    assert not any(d.exists() for d in temp_dirs)  # Ray's session files and the servers' temp files go with it
