from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from edgedx import Classifier
from tests.factories import manifest_dict, tiny_cnn


def test_one_line_per_answer_with_hashes_and_versions(tmp_path, xray_files):
    model = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())
    log = tmp_path / "audit.ndjson"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with Classifier(model, audit=log) as clf:
        results = list(clf.classify_many([xray_files[0], bad]))
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 2
    ok, err = lines
    assert ok["input_sha256"] == hashlib.sha256(xray_files[0].read_bytes()).hexdigest()
    assert ok["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert len(ok["manifest_sha256"]) == 64
    assert ok["backend"] == "onnxruntime" and ok["precision"] == "fp32"
    assert ok["versions"]["onnxruntime"] and ok["versions"]["edgedx"]
    assert ok["decision"] == results[0].label and ok["scores"] == results[0].scores
    assert ok["threshold"] == 0.5 and ok["status"] == "ok" and ok["time"].endswith("Z")
    assert err["status"] == "error" and err["decision"] is None and err["input_sha256"]
    # appended, not overwritten
    with Classifier(model, audit=log) as clf:
        clf.classify(xray_files[1])
    assert len(log.read_text().splitlines()) == 3


def test_sigterm_stops_cleanly_with_every_finished_result_written(tmp_path, xray_files):
    model = tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())
    out = tmp_path / "out.ndjson"
    files = [str(f) for f in xray_files] * 400
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgedx", "classify", *files, "-m", str(model), "--json", "--output", str(out), "--batch-size", "1"],
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.stat().st_size < 2000):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    lines = out.read_text().splitlines()
    assert proc.returncode == 130, err
    assert "interrupted after" in err and "Traceback" not in err
    assert 0 < len(lines) < len(files)
    for line in lines:  # every written record is whole
        assert json.loads(line)["status"] == "ok"
