"""The OpenVINO backend: the same Session protocol, the same ONNX file and manifest, f32 unless asked.

Skipped where openvino is not installed (it is in the ``test`` extra, so CI runs these).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedx import Classifier
from edgedx.backends import BACKENDS, SessionOptions
from edgedx.console import Backend
from edgedx.errors import BackendUnavailable, UsageError
from tests.conftest import XRAY, need
from tests.factories import frame, manifest_dict, tiny_cnn

ov = pytest.importorskip("openvino")

BUNDLED_FP32 = Path(__file__).resolve().parents[1] / "edgedx" / "models" / "chest_xray_cnn_fp32.onnx"


@pytest.fixture
def model(tmp_path):
    return tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())


def spread(n: int) -> list[Path]:
    """``n`` real chest X-rays spread over both classes of the training set."""
    files = sorted(need(XRAY).rglob("*.jpeg"))
    return [files[int(i * len(files) / n)] for i in range(n)]


def test_backend_names_match_the_cli_choices():
    assert {b.value for b in Backend} == {"auto", *BACKENDS}


def test_same_records_as_onnxruntime_on_a_tiny_model_and_every_batch_size(model, xray_files):
    inputs = [*xray_files, frame(50, 40), *xray_files[:3]]  # 10 inputs: batches of 4, 4 and 2
    with Classifier(model, "onnxruntime", batch_size=4, workers=0) as ref, Classifier(model, "openvino", batch_size=4, workers=0) as clf:
        want, got = list(ref.classify_many(inputs)), list(clf.classify_many(inputs))
        assert clf.session.describe()["compiled_batches"] == [1, 4, 2]
        assert clf.session.manifest == ref.manifest  # each backend read the same contract at open
    assert [r.label for r in got] == [r.label for r in want]
    for a, b in zip(got, want):
        assert a.backend == "openvino" and a.precision == "f32" and b.precision is None
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_same_decisions_as_onnxruntime_on_real_scans():
    files = spread(24)
    with Classifier(BUNDLED_FP32, "onnxruntime") as ref, Classifier(BUNDLED_FP32, "openvino") as clf:
        want, got = list(ref.classify_many(files)), list(clf.classify_many(files))
    assert all(r.status == "ok" for r in want)
    assert [r.label for r in got] == [r.label for r in want]
    diff = max(abs(a.scores[k] - b.scores[k]) for a, b in zip(got, want) for k in a.scores)
    assert diff < 1e-4, f"max score difference {diff:.2e}"


def test_bf16_runs_only_when_asked_and_only_where_the_cpu_has_it(model):
    with Classifier(model, "openvino") as clf:
        assert clf.session.describe()["precision"] == "f32"  # never OpenVINO's bf16 default
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(model)), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    if compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() != "bf16":
        with pytest.raises(BackendUnavailable, match="runs f32, not the bf16"):
            Classifier(model, "openvino", session_options=SessionOptions(precision="bf16"))
        return
    with Classifier(model, "openvino", session_options=SessionOptions(precision="bf16")) as clf:
        r = clf.classify(frame(40, 40))
    assert r.precision == "bf16"


def test_a_precision_is_refused_where_it_cannot_be_honoured(model):
    with pytest.raises(UsageError, match="runs the model file as stored"):
        Classifier(model, "onnxruntime", session_options=SessionOptions(precision="f32"))
    with pytest.raises(UsageError, match="choose f32, bf16"):
        Classifier(model, "openvino", session_options=SessionOptions(precision="fp8"))


def test_a_file_that_is_not_onnx_is_a_model_error(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception, match="not an ONNX model") as info:
        Classifier(bad, "openvino")
    assert info.value.exit_code == 4


def test_cli_backend_openvino_says_what_ran(model, xray_files):
    r = subprocess.run(
        [sys.executable, "-m", "edgedx", "classify", str(xray_files[0]), "-m", str(model), "--backend", "openvino", "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["backend"] == "openvino" and record["precision"] == "f32"


def test_auto_keeps_onnxruntime_and_never_imports_openvino(model, xray_files):
    code = (
        "import sys; from edgedx import Classifier; "
        f"r = Classifier({str(model)!r}).classify({str(xray_files[0])!r}); "
        "print(r.backend, 'openvino' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["onnxruntime", "False"]


def test_session_protocol_on_openvino(model):
    from edgedx.backends.openvino import OpenVinoSession

    with OpenVinoSession(model) as sess:
        assert sess.slots == 1 and sess.manifest is not None
        buf = sess.input_buffer(3)
        buf[:] = np.linspace(-1, 1, buf.size, dtype=np.float32).reshape(buf.shape)
        sess.submit(buf)
        out = sess.wait()
        assert out.shape == (3, 2) and out.dtype == np.float32
    with pytest.raises(UsageError, match="closed"):
        sess.run(np.zeros((1, 1, 32, 32), np.float32))
