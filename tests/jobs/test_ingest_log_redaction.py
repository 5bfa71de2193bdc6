"""No signed URL, token or credential in any log line: a real run that fails on a signed href (HTTP 503, GDAL logs
the signed URL it asked for)."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd

from pipeline.logs import install_redaction, redact_secrets

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests" / "pipeline" / "ingest" / "range_server.py"


def test_a_run_failing_on_a_signed_href_logs_no_signature(sample_items, serve_stac, sas_service,
                                                          tmp_path: Path) -> None:  # fmt: skip
    s2_col, s2 = sample_items("sentinel-2-l2a")
    s1_col, s1 = sample_items("sentinel-1-rtc")
    item = copy.deepcopy(next(i for i in s2 if i["id"].endswith("_87_48")))
    for key, asset in item["assets"].items():  # as on Planetary Computer: Azure blobs, signed before each read
        asset["href"] = f"http://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/33/U/UP/{item['id']}/{key}.tif"
    pair = next(i for i in s1 if i["id"].endswith("_87_48"))
    # every request goes through a loopback proxy that answers 503 (throttled), nothing leaves the host
    proxy = subprocess.Popen([sys.executable, str(SERVER), str(tmp_path), "--status=503"], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    assert proxy.stdout is not None
    port = int(proxy.stdout.readline())
    sas_url, calls = sas_service
    try:
        with serve_stac(tmp_path / "api", {"sentinel-2-l2a": (s2_col, [item]), "sentinel-1-rtc": (s1_col, [pair])}) as url:
            env = os.environ | {"STAC_API_URL": url, "PC_SAS_URL": sas_url, "GDAL_HTTP_PROXY": f"127.0.0.1:{port}",
                                "NO_PROXY": "127.0.0.1,localhost", "CPL_CURL_VERBOSE": "NO",
                                "AWS_SECRET_ACCESS_KEY": "local-stack-secret"}  # fmt: skip
            done = subprocess.run([sys.executable, str(ROOT / "jobs" / "ingest.py"), "--no-ray", "--config",
                                   str(ROOT / "configs" / "ingest-demo.yaml"), "--set", f"store={tmp_path / 'ds'}",
                                   "--set", "sensors.0.sign=planetary-computer", "--set", "max_retries=1",
                                   "--set", "retry_backoff_s=0",
                                   "--set", "quicklooks=0"], env=env, capture_output=True, text=True, timeout=120,
                                  cwd=ROOT)  # fmt: skip
    finally:
        proxy.kill()
        proxy.wait()
    log = done.stdout + done.stderr
    assert done.returncode == 1 and "nothing usable" in log, log[-3000:]
    assert calls and "HTTP response code on http://sentinel2l2a01" in log  # signed with a real token, GDAL
    # logged the URL it asked for ...
    leaks = [line for line in log.splitlines() if "SECRET" in line]
    assert not leaks and "sig=<redacted>" in log, leaks[:5]  # ... without the signature
    rejects = pd.read_parquet(tmp_path / "ds" / "rejects.parquet")
    denied = rejects[rejects["subject"] == item["id"]]
    assert set(denied["kind"]) == {"transient_io"} and not denied["reason"].str.contains("SECRET").any()


def test_third_party_records_warnings_and_tracebacks_are_redacted(caplog) -> None:
    install_redaction()
    signed = "https://acct.blob.core.windows.net/c/b.tif?st=2026&se=2027&sp=rl&sv=2021&sr=c&sig=SECRET9"
    s3 = "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAABCDEFGHIJKLMNOP%2F&X-Amz-Signature=SECRET8"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("rasterio._env").warning("HTTP response code on %s: 403", signed)
        logging.getLogger("urllib3.connectionpool").debug('"GET %s HTTP/1.1" 200', s3)
        logging.getLogger("modelops.tracking").info("tracking at %s", "http://alice:SECRET7@mlflow:5000")
        try:
            raise OSError(f"reading {signed} failed")
        except OSError:
            logging.getLogger("ray.data").exception("task failed")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"slow read of {signed}", UserWarning, stacklevel=1)
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert text.count("<redacted>") >= 6 and "SECRET" not in text and "AKIA" not in text, text
    assert redact_secrets("aws_secret_access_key=abc123 Authorization: Bearer tok") == \
        "aws_secret_access_key=<redacted> Authorization: Bearer <redacted>"  # fmt: skip
