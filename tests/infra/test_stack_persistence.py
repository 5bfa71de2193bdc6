"""A local stack that keeps its data: objects and a registered model survive `down` and `up`.

Its own small stack (S3 + MLflow) in a temporary folder, stopped and started again on new ports.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from infra.local.stack import LocalStack, StackConfig

pytestmark = pytest.mark.stack


def _fs(env: dict[str, str]):
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=env["AWS_ENDPOINT_URL"], skip_instance_cache=True)  # fmt: skip


def test_objects_and_a_registered_model_survive_down_and_up(tmp_path: Path) -> None:
    import mlflow

    from anysat import AnySat, AnySatConfig
    from modelops.registry import from_registry, register_encoder

    stack = LocalStack(StackConfig(state_dir=tmp_path / "stack", services=("s3", "mlflow")))
    big = np.random.default_rng(0).integers(0, 255, 7 * 2**20, dtype=np.uint8).tobytes()  # > moto's 5 MB buffer
    objects = {"anysat/store/shards/a.zarr/zarr.json": b'{"zarr_format": 3}', "anysat/big.bin": big,
               "anysat/dir/é ü+key.txt": "non-ASCII key".encode()}  # fmt: skip
    try:
        env = stack.up()
        fs = _fs(env)
        for path, blob in objects.items():
            fs.pipe_file(path, blob)
        fs.pipe_file("anysat/gone.txt", b"deleted before the restart")
        fs.rm_file("anysat/gone.txt")
        fs.pipe_file("anysat/store/shards/a.zarr/zarr.json", b'{"zarr_format": 3, "rewritten": true}')
        objects["anysat/store/shards/a.zarr/zarr.json"] = b'{"zarr_format": 3, "rewritten": true}'
        model = AnySat(AnySatConfig(size="tiny", modalities=("s2",))).eval()
        saved = model.save(tmp_path / "encoder")
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        with mlflow.start_run(experiment_id=mlflow.create_experiment("persist")) as run:
            pass
        register_encoder(saved, name="persisted", tracking_uri=env["MLFLOW_TRACKING_URI"], run_id=run.info.run_id)
        old_pids = stack.pids()
        stack.down()
        assert not [p for p in old_pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        again = stack.up()
        assert again["AWS_ENDPOINT_URL"] != env["AWS_ENDPOINT_URL"]  # a new server process on a new port
        fs = _fs(again)
        for path, blob in objects.items():
            assert hashlib.sha256(fs.cat_file(path)).hexdigest() == hashlib.sha256(blob).hexdigest(), path
        assert not fs.exists("anysat/gone.txt")
        loaded = from_registry("models:/persisted@candidate", tracking_uri=again["MLFLOW_TRACKING_URI"])
        for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
    finally:
        stack.down()
