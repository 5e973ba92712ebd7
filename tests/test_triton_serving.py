"""A REAL Triton server (tritonserver from nvidia-pytriton, Python backend) on loopback, serving the
repository `edgedx export triton --backend python` writes; `edgedx classify --triton` must give the
records local `edgedx classify` gives, over HTTP and gRPC.

Needs the serving environment (README, Serving on Triton): ``$EDGEDX_TRITON_PYTHON`` or
``.venv-triton/`` at the repository root. Skips with the reason where the server cannot start,
unless ``EDGEDX_TRITON_REQUIRED=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgedx.cli import main
from tests.conftest import DICOM, ROOT, XRAY, need

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    if os.environ.get("EDGEDX_TRITON_REQUIRED") == "1":
        pytest.fail(f"EDGEDX_TRITON_REQUIRED=1 but the Triton server cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def serving_env():
    pytest.importorskip("tritonclient.http")
    from edgedx.errors import EdgedxError
    from edgedx.serving import server

    python = os.environ.get(server.ENV_VARIABLE) or (ROOT / ".venv-triton" if (ROOT / ".venv-triton").is_dir() else None)
    if python is None:
        _unavailable(f"no serving environment: set {server.ENV_VARIABLE} or run .ci/triton-env .venv-triton")
    try:
        return server.find_env(python)
    except EdgedxError as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="module")
def served(tmp_path_factory, serving_env):
    """(server, model path): a tritonserver serving the bundled default model's python repository."""
    from edgedx import bundled
    from edgedx.errors import EdgedxError
    from edgedx.serving import server
    from export import triton

    env = serving_env
    model = bundled.default_model()
    repo = tmp_path_factory.mktemp("triton") / "repo"
    triton.write_repository(model, repo, triton.TritonOptions(variant="python", max_batch=8, preferred_batch=(4, 8)))
    srv = server.TritonServer(repo, env, pythonpath=[ROOT], timeout_s=180)
    try:
        srv.start()
    except EdgedxError as exc:
        _unavailable(str(exc))
    with srv:  # stops it and removes its work folder
        yield srv, model


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    """Real X-rays of both classes, DICOM files (accepted CR, JPEG 2000, rejected CT/MR), a 16-bit PNG, a blank
    image, a corrupt file and a missing one."""
    import cv2

    need(XRAY)
    need(DICOM)
    tmp = tmp_path_factory.mktemp("scans")
    xrays = sorted((XRAY / "NORMAL").glob("*.jpeg"))[:5] + sorted((XRAY / "PNEUMONIA").glob("*.jpeg"))[:5]
    sixteen = tmp / "sixteen.png"
    img = cv2.imread(str(xrays[0]), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257
    cv2.imwrite(str(sixteen), img)
    blank = tmp / "blank.png"
    cv2.imwrite(str(blank), np.full((128, 128), 77, np.uint8))
    corrupt = tmp / "corrupt.jpeg"
    corrupt.write_bytes(xrays[1].read_bytes()[:300])
    dicoms = [DICOM / n for n in ("dicomdirtests_CR1_6154.dcm", "RG1_UNCR.dcm", "RG1_J2KI.dcm", "RG3_J2KR.dcm", "CT_small.dcm", "MR_small.dcm")]
    return [*xrays, sixteen, blank, corrupt, *[d for d in dicoms if d.exists()], tmp / "missing.png"]


def classify(capsys, *args) -> tuple[int, str, str]:
    code = main(["classify", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_records_match_local_classify(capsys, served, scans, protocol):
    srv, model = served
    url = srv.http_url if protocol == "http" else srv.grpc_url
    code_local, out_local, _ = classify(capsys, *scans, "--model", model, "--json", "--workers", "0")
    code_served, out_served, err = classify(capsys, *scans, "--triton", url, "--json", "--batch-size", "3")
    local, remote = records(out_local), records(out_served)
    assert code_served == code_local == 1, err  # the corrupt and the missing file failed, the rest answered
    assert [r["path"] for r in remote] == [r["path"] for r in local] == [str(s) for s in scans]
    statuses = [r["status"] for r in remote]
    assert statuses.count("ok") >= 10 and "rejected" in statuses and statuses.count("error") == 2
    for lo, re_ in zip(local, remote):
        assert re_["status"] == lo["status"], (lo, re_)
        assert re_["label"] == lo["label"] and re_["positive"] == lo["positive"] and re_["threshold"] == lo["threshold"]
        assert re_["reason"] == lo["reason"]
        if lo["status"] == "error":
            # The same message, except that the server never sees the path (it only gets bytes).
            assert re_["error"] and (re_["error"] == lo["error"] or re_["error"] in lo["error"]), (lo["error"], re_["error"])
        if lo["status"] == "ok":
            assert set(re_["scores"]) == set(lo["scores"])
            for label, score in lo["scores"].items():
                assert abs(re_["scores"][label] - score) < 1e-5, (lo["path"], label, score, re_["scores"][label])
        assert re_["backend"] == "triton:python"
        assert url.split("://")[1] in re_["model"] and model.name in re_["model"]


def test_output_options_and_threshold_apply_to_served_records(capsys, served, scans, tmp_path):
    srv, _ = served
    good = scans[:4]
    code, out, _ = classify(capsys, *good, "--triton", srv.grpc_url, "--format", "csv", "--top-k", "1")
    assert code == 0
    rows = out.splitlines()
    assert rows[0].startswith("path,frame,status,label,score,score_NORMAL,score_PNEUMONIA") and len(rows) == 1 + len(good)
    out_file = tmp_path / "served.ndjson"
    code, out, _ = classify(capsys, *good, "--triton", srv.http_url, "--json", "--top-k", "2", "--threshold", "0.0", "-o", out_file)
    assert code == 0 and out == ""
    recs = records(out_file.read_text())
    assert all(r["positive"] is True and r["label"] == "PNEUMONIA" and r["threshold"] == 0.0 for r in recs)
    assert all(len(r["top_k"]) == 2 for r in recs)


def test_server_statistics_count_the_requests(capsys, served, scans):
    """Triton's own statistics see exactly what the client sent: 2 requests of 2 files."""
    from tritonclient import http

    srv, _ = served
    client = http.InferenceServerClient(srv.http_url.split("://")[1])

    def counts() -> tuple[int, int]:
        stats = client.get_inference_statistics("edgedx")["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"]), int(stats["inference_count"])

    try:
        before = counts()
        code, _, _ = classify(capsys, *scans[:4], "--triton", srv.http_url, "--json", "--batch-size", "2", "--workers", "1")
        after = counts()
    finally:
        client.close()
    assert code == 0
    assert (after[0] - before[0], after[1] - before[1]) == (2, 4)


def test_wrong_model_name_is_backend_unavailable(capsys, served, scans):
    srv, _ = served
    code, out, err = classify(capsys, scans[0], "--triton", srv.http_url + "/nosuchmodel")
    assert code == 3 and out == ""
    assert err.strip().splitlines() == [f"edgedx: error: Triton at {srv.http_url.split('://')[1]} has no ready model 'nosuchmodel'"]


def test_onnxruntime_repository_is_read_by_triton_up_to_its_missing_backend(tmp_path, serving_env):
    """nvidia-pytriton's server has no ONNX Runtime backend: the onnxruntime_onnx repository cannot
    serve here. What it can show: Triton reads every config, loads the two Python steps, and refuses
    the model step only for want of the backend library (not for its config)."""
    from tritonclient import http

    from edgedx import bundled
    from edgedx.serving import server
    from export import triton

    repo = tmp_path / "repo"
    triton.write_repository(bundled.default_model(), repo, triton.TritonOptions(name="ort"))
    srv = server.TritonServer(repo, serving_env, pythonpath=[ROOT], timeout_s=180,
                              extra_args=("--exit-on-error=false", "--strict-readiness=false"))
    with srv:
        client = http.InferenceServerClient(srv.http_url.split("://")[1])
        try:
            index = {m["name"]: m for m in client.get_model_repository_index()}
        finally:
            client.close()
    assert index["ort_preprocess"]["state"] == index["ort_postprocess"]["state"] == "READY"
    assert index["ort_model"]["state"] == "UNAVAILABLE"
    assert "unable to find backend library for backend 'onnxruntime'" in index["ort_model"]["reason"]


def test_labels_file_serves_triton_s_classification_extension(served, scans):
    """The model step answers Triton's own classification requests with the manifest's labels."""
    from tritonclient import http

    from edgedx import manifest as manifest_mod
    from edgedx.serving import stages

    srv, model = served
    m = manifest_mod.load(model)
    sample = stages.prepare(scans[0].read_bytes(), m, stages.decode_options(m)).sample[None]
    client = http.InferenceServerClient(srv.http_url.split("://")[1])
    try:
        inp = http.InferInput(m.input_name, list(sample.shape), "FP32")
        inp.set_data_from_numpy(sample)
        result = client.infer("edgedx_model", [inp], outputs=[http.InferRequestedOutput(m.output_name, class_count=2)])
    finally:
        client.close()
    top = [bytes(x).decode().split(":") for x in result.as_numpy(m.output_name).reshape(-1)]
    assert sorted(label for _, _, label in top) == sorted(m.labels)
    assert [int(index) for _, index, label in top] == [m.labels.index(label) for _, _, label in top]
