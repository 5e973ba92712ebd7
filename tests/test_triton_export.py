"""`edgedx export triton`: the repository's configs against the model, the checker, and the served
steps' own code (no server here: tests/test_triton_serving.py runs a real one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgedx.cli import main
from edgedx.errors import ModelError, UsageError
from tests.factories import manifest_dict, tiny_cnn

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("onnx")

from export import triton  # noqa: E402  (after the skips: it needs tritonclient)


@pytest.fixture
def model(tmp_path) -> Path:
    return tiny_cnn(tmp_path / "tiny.onnx", size=32, manifest=manifest_dict(size=32))


def configs(repo: Path, name: str = "edgedx") -> dict:
    return {step: triton.read_config(repo / folder) for step, folder in triton.step_names(name).items()}


def test_onnx_repository_configs_come_from_the_model_and_manifest(model, tmp_path):
    repo = tmp_path / "repo"
    opts = triton.TritonOptions(max_batch=16, instances=2, preferred_batch=(4, 16), max_queue_delay_us=250)
    report = triton.write_repository(model, repo, opts)
    pb = triton.model_config_pb2()
    c = configs(repo)
    mid = c["model"]
    assert mid.platform == "onnxruntime_onnx" and mid.max_batch_size == 16 and mid.default_model_filename == "model.onnx"
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims), t.format) for t in mid.input] == [
        ("input", "TYPE_FP32", [1, 32, 32], pb.ModelInput.FORMAT_NCHW)]
    assert [(t.name, list(t.dims), t.label_filename) for t in mid.output] == [("logits", [2], "labels.txt")]
    assert list(mid.dynamic_batching.preferred_batch_size) == [4, 16] and mid.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in mid.instance_group] == [(2, pb.ModelInstanceGroup.KIND_AUTO)]
    assert (repo / "edgedx_model" / "labels.txt").read_text() == "NORMAL\nPNEUMONIA\n"
    assert (repo / "edgedx_model" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    for step in c.values():  # every step carries the manifest
        assert json.loads(step.parameters["edgedx_manifest"].string_value)["labels"] == ["NORMAL", "PNEUMONIA"]
        assert step.max_batch_size == 16
    assert c["ensemble"].platform == "ensemble" and [s.model_name for s in c["ensemble"].ensemble_scheduling.step] == [
        "edgedx_preprocess", "edgedx_model", "edgedx_postprocess"]
    assert c["preprocess"].backend == "python" and "PreprocessModel as TritonPythonModel" in (repo / "edgedx_preprocess/1/model.py").read_text()
    assert report.input == {"name": "input", "data_type": "TYPE_FP32", "dims": [1, 32, 32]} and report.model_file == "tiny.onnx"
    assert not list(repo.glob(".edgedx-staging-*"))
    assert triton.check(repo).ensemble == "edgedx"


def test_python_variant_runs_edgedx_session_and_nhwc_sets_the_format(tmp_path):
    m = tiny_cnn(tmp_path / "nhwc.onnx", channels=3, size=24, layout="NHWC", manifest=manifest_dict(channels=3, size=24, layout="NHWC"))
    repo = tmp_path / "repo"
    triton.write_repository(m, repo, triton.TritonOptions(name="chest", variant="python"))
    pb = triton.model_config_pb2()
    mid = configs(repo, "chest")["model"]
    assert mid.backend == "python" and mid.platform == "" and mid.parameters["edgedx_model_file"].string_value == "model.onnx"
    assert list(mid.input[0].dims) == [24, 24, 3] and mid.input[0].format == pb.ModelInput.FORMAT_NHWC
    assert "SessionModel as TritonPythonModel" in (repo / "chest_model/1/model.py").read_text()
    assert triton.check(repo).notes == ["model step: python (edgedx session)"]
    assert configs(repo, "chest")["preprocess"].parameters["edgedx_gate"].string_value == "true"
    triton.write_repository(m, repo, triton.TritonOptions(name="nogate", gate=False))
    assert configs(repo, "nogate")["preprocess"].parameters["edgedx_gate"].string_value == "false"


def test_model_and_manifest_that_disagree_write_nothing(tmp_path):
    wrong = tiny_cnn(tmp_path / "wrong.onnx", size=32, manifest=manifest_dict(size=64))
    with pytest.raises(ModelError, match=r"does not match the model's input dims \[1, 32, 32\]"):
        triton.write_repository(wrong, tmp_path / "repo")
    assert not (tmp_path / "repo" / "edgedx").exists()
    three = tiny_cnn(tmp_path / "three.onnx", size=32, classes=3, manifest=manifest_dict(size=32))
    with pytest.raises(ModelError, match="outputs 3 values but the manifest has 2 labels"):
        triton.write_repository(three, tmp_path / "repo")


def test_static_batch_and_missing_manifest_are_refused(tmp_path):
    import onnx

    m = tiny_cnn(tmp_path / "m.onnx", size=32, manifest=manifest_dict(size=32))
    proto = onnx.load(str(m))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(tmp_path / "static.onnx"))
    with pytest.raises(ModelError, match="static batch axis"):
        triton.write_repository(tmp_path / "static.onnx", tmp_path / "repo")
    bare = tiny_cnn(tmp_path / "bare.onnx", size=32)
    with pytest.raises(ModelError, match="carries no edgedx manifest"):
        triton.write_repository(bare, tmp_path / "repo")


def test_existing_models_and_bad_options_are_usage_errors(model, tmp_path):
    repo = tmp_path / "repo"
    triton.write_repository(model, repo)
    with pytest.raises(UsageError, match="already has edgedx"):
        triton.write_repository(model, repo)
    triton.write_repository(model, repo, triton.TritonOptions(name="second"))  # beside the first
    with pytest.raises(UsageError, match="several edgedx ensembles"):
        triton.check(repo)
    assert triton.check(repo, "second").ensemble == "second"
    with pytest.raises(UsageError, match=r"--preferred-batch \[16\] exceeds max_batch_size 8"):
        triton.write_repository(model, repo, triton.TritonOptions(name="third", preferred_batch=(4, 16)))
    with pytest.raises(UsageError, match="--name"):
        triton.write_repository(model, repo, triton.TritonOptions(name="../x"))


def _tamper(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("where, old, new, message", [
    ("edgedx_preprocess/config.pbtxt", "dims: 32\n", "dims: 33\n", "edgedx_preprocess: outputs are"),
    ("edgedx_model/config.pbtxt", 'name: "input"', 'name: "pixels"', "edgedx_model: inputs are"),
    ("edgedx_postprocess/config.pbtxt", "dims: 2\n", "dims: 3\n", "edgedx_postprocess: inputs are"),
    ("edgedx_model/labels.txt", "PNEUMONIA", "OTHER", "labels.txt holds"),
    ("edgedx_model/config.pbtxt", "max_batch_size: 8", "max_batch_size: 4", "max_batch_size 4 differs"),
    ("edgedx_postprocess/config.pbtxt", "NORMAL", "HEALTHY", "its manifest differs"),
    ("edgedx_preprocess/1/model.py", "PreprocessModel", "PostprocessModel", "does not load edgedx.serving.triton_models.PreprocessModel"),
    ("edgedx/config.pbtxt", 'value: "model_input"', 'value: "elsewhere"', "step inputs"),
])
def test_check_finds_a_repository_changed_after_writing(model, tmp_path, capsys, where, old, new, message):
    repo = tmp_path / "repo"
    triton.write_repository(model, repo)
    _tamper(repo / where, old, new)
    with pytest.raises(ModelError, match=message):
        triton.check(repo)
    code = main(["export", "triton", "--check", str(repo)])
    err = capsys.readouterr().err
    assert code == 4 and err.startswith("edgedx: error: Triton repository") and len(err.strip().splitlines()) == 1


def _fake_engine(tmp_path: Path, onnx_path: Path, profile: dict | None) -> Path:
    """An engine file that is never deserialized, with a sidecar as `edgedx export engine` writes it."""
    from edgedx.errors import file_sha256

    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not really a plan, never loaded here")
    data = manifest_dict(size=32)
    data["engine"] = {"sha256": file_sha256(engine), "profile": profile, "source_onnx": onnx_path.name, "precision": "fp16"}
    (tmp_path / "tiny.engine.json").write_text(json.dumps(data))
    return engine


def test_engine_repository_takes_max_batch_from_the_profile(model, tmp_path):
    engine = _fake_engine(tmp_path, model, {"input": "input", "min": [1, 1, 32, 32], "opt": [4, 1, 32, 32], "max": [16, 1, 32, 32]})
    repo = tmp_path / "repo"
    report = triton.write_repository(engine, repo)
    pb = triton.model_config_pb2()
    mid = configs(repo)["model"]
    assert mid.platform == "tensorrt_plan" and mid.max_batch_size == 16 and report.max_batch_size == 16
    assert [(g.kind, g.count) for g in mid.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 1)]
    assert (repo / "edgedx_model/1/model.plan").read_bytes() == engine.read_bytes()
    assert (repo / "edgedx_model/1/model.plan.json").is_file()
    assert triton.check(repo).max_batch_size == 16  # the source ONNX is not in the repository: sidecar and profile
    with pytest.raises(UsageError, match="exceeds the engine profile's max batch 16"):
        triton.write_repository(engine, tmp_path / "r2", triton.TritonOptions(max_batch=32))
    assert triton.write_repository(engine, tmp_path / "r3", triton.TritonOptions(max_batch=8)).max_batch_size == 8


def test_engine_without_profile_or_with_a_changed_plan_is_refused(model, tmp_path):
    engine = _fake_engine(tmp_path, model, None)
    with pytest.raises(ModelError, match="fixed batch"):
        triton.write_repository(engine, tmp_path / "repo")
    engine = _fake_engine(tmp_path, model, {"input": "input", "min": [1, 1, 32, 32], "opt": [1, 1, 32, 32], "max": [8, 1, 32, 32]})
    engine.write_bytes(b"rebuilt since")
    with pytest.raises(ModelError, match="sha256 differs"):
        triton.write_repository(engine, tmp_path / "repo")


def test_cli_writes_and_checks(model, tmp_path, capsys):
    repo = tmp_path / "repo"
    code = main(["export", "triton", str(model), "--repo", str(repo), "--backend", "python", "--preferred-batch", "2",
                 "--preferred-batch", "4", "--max-batch", "4", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["steps"] == {"edgedx_preprocess": "python", "edgedx_model": "python", "edgedx_postprocess": "python"}
    code = main(["export", "triton", "--check", str(repo)])
    out, _ = capsys.readouterr()
    assert code == 0 and out.startswith(f"checked ensemble edgedx in {repo}")
    assert main(["export", "triton", str(model)]) == 2
    assert "give MODEL and --repo" in capsys.readouterr().err
    assert main(["export", "triton", "--check", str(tmp_path / "nothing")]) == 2


# -- the served steps' own code, without Triton ---------------------------------------------------

def test_stages_give_the_classifier_s_answers(model, xray_files, tmp_path):
    from edgedx import manifest as manifest_mod
    from edgedx.api import Classifier
    from edgedx.backends import open_session
    from edgedx.serving import stages

    m = manifest_mod.load(model)
    options = stages.decode_options(m)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.zeros((80, 80), np.uint8))
    files = [*xray_files, bad, blank]
    prepared = [stages.prepare(f.read_bytes(), m, options) for f in files]
    with open_session(model, "onnxruntime") as session:
        raw = session.run(np.stack([p.sample for p in prepared]))
    recs = stages.records(raw, [p.status for p in prepared], m)
    with Classifier(model, workers=0) as clf:
        local = list(clf.classify_many(files))
    for rec, res in zip(recs, local):
        assert rec["status"] == res.status
        assert rec.get("label") == res.label and rec.get("reason") == res.reason and rec.get("reason_code") == res.reason_code and rec.get("error") == res.error
        if res.status == "ok":
            assert rec["scores"] == pytest.approx(res.scores, abs=1e-6) and rec["positive"] == res.positive
    assert [r["status"] for r in recs[-2:]] == ["error", "rejected"]
    assert recs[-1]["reason_code"] == "constant_image" and recs[-1]["reason"]
    assert not prepared[-1].sample.any()


def test_served_step_judges_colour_from_the_pixels_like_classify(tmp_path):
    """A gray model that judges colour from the pixels: the served step must decode in colour too,
    or a colour photograph would pass as gray (a gray decode hides its colour)."""
    import cv2

    from edgedx import manifest as manifest_mod
    from edgedx.api import Classifier
    from edgedx.serving import stages

    data = manifest_dict(size=32)
    data["accepts"] = {"color": ["gray"]}
    model = tiny_cnn(tmp_path / "gray.onnx", size=32, manifest=data)
    m = manifest_mod.load(model)
    rng = np.random.default_rng(0)
    colour = tmp_path / "colour.jpg"
    cv2.imwrite(str(colour), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    gray = tmp_path / "gray.jpg"
    cv2.imwrite(str(gray), cv2.cvtColor(rng.integers(0, 256, (64, 64), dtype=np.uint8), cv2.COLOR_GRAY2BGR))  # gray, stored as RGB
    served = [stages.prepare(f.read_bytes(), m, stages.decode_options(m)) for f in (colour, gray)]
    with Classifier(model, workers=0) as clf:
        local = list(clf.classify_many([colour, gray]))
    assert json.loads(served[0].status)["reason_code"] == local[0].reason_code == "color_not_accepted"
    assert served[1].status == "" and local[1].status == "ok"
    assert stages.decode_options(m, use_gate=False).target_channels == 1  # no gate: gray decode is fine


def test_a_serving_environment_without_pytriton_is_refused_with_the_reason(monkeypatch):
    import importlib.util
    import sys

    from edgedx.errors import BackendUnavailable
    from edgedx.serving import server

    if importlib.util.find_spec("pytriton") is None:
        with pytest.raises(BackendUnavailable, match="cannot import nvidia-pytriton"):
            server.find_env(sys.executable)
    else:  # this Python has pytriton: it must also have numpy < 2 to be accepted
        if int(np.__version__.split(".")[0]) >= 2:
            with pytest.raises(BackendUnavailable, match="needs numpy < 2"):
                server.find_env(sys.executable)
    monkeypatch.delenv(server.ENV_VARIABLE, raising=False)
    with pytest.raises(BackendUnavailable, match="no Triton serving environment"):
        server.find_env(None)


def test_url_parsing():
    from edgedx.serving.client import parse_url

    assert str(parse_url("http://127.0.0.1:8000")) == "http://127.0.0.1:8000/edgedx"
    assert str(parse_url("grpc://localhost:8001/chest")) == "grpc://localhost:8001/chest"
    assert str(parse_url("127.0.0.1:8000")) == "http://127.0.0.1:8000/edgedx"
    for bad in ("ftp://x:1", "http://nohost", "grpc://:8001"):
        with pytest.raises(UsageError):
            parse_url(bad)


def test_triton_refuses_local_options_and_reports_an_unreachable_server(capsys, xray_files):
    from edgedx.serving.server import free_port

    code = main(["classify", str(xray_files[0]), "--triton", "http://127.0.0.1:1", "--model", "x.onnx", "--no-gate"])
    err = capsys.readouterr().err
    assert code == 2 and "--model, --no-gate apply to local inference" in err
    code = main(["classify", str(xray_files[0]), "--triton", f"grpc://127.0.0.1:{free_port()}"])
    out, err = capsys.readouterr()
    assert code == 3 and out == "" and err.startswith("edgedx: error: cannot reach Triton at grpc://127.0.0.1:")
    assert len(err.strip().splitlines()) == 1
