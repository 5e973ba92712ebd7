from __future__ import annotations

import threading

import pytest

from edgedx import Classifier
from edgedx.api import ManifestOverrides, expand_paths
from edgedx.errors import BackendUnavailable, ModelError, UsageError
from tests.factories import frame, manifest_dict, tiny_cnn


@pytest.fixture
def model(tmp_path):
    return tiny_cnn(tmp_path / "m.onnx", manifest=manifest_dict())


def test_numpy_frames_in_typed_results_out(model):
    with Classifier(model) as clf:
        r = clf.classify(frame(64, 48))
    assert r.status == "ok" and r.error is None and r.path is None
    assert r.label in ("NORMAL", "PNEUMONIA")
    assert abs(sum(r.scores.values()) - 1.0) < 1e-9
    assert r.score == r.scores[r.label]
    assert r.positive == (r.scores["PNEUMONIA"] >= 0.5)
    assert r.backend == "onnxruntime"


def test_batch_results_do_not_depend_on_batch_size(model, xray_files):
    with Classifier(model, batch_size=1) as one, Classifier(model, batch_size=4) as four:
        a = list(one.classify_many(xray_files))
        b = list(four.classify_many(xray_files))
    assert [r.path for r in a] == [str(f) for f in xray_files]
    for x, y in zip(a, b):
        assert x.label == y.label
        assert abs(x.score - y.score) < 1e-6


def test_bad_file_gets_error_record_and_others_results(model, xray_files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    missing = tmp_path / "missing.jpeg"
    inputs = [xray_files[0], bad, missing, xray_files[1]]
    with Classifier(model, batch_size=2) as clf:
        results = list(clf.classify_many(inputs))
    assert [r.status for r in results] == ["ok", "error", "error", "ok"]
    assert results[1].label is None and results[1].error
    assert "No such file" in results[2].error
    assert [r.path for r in results] == [str(p) for p in inputs]


def test_threshold_override_changes_the_decision(model):
    img = frame(32, 32)
    with Classifier(model, threshold=0.0) as low, Classifier(model, threshold=1.0) as high:
        assert low.classify(img).label == "PNEUMONIA"
        assert high.classify(img).label == "NORMAL"


def test_threshold_needs_a_binary_model(tmp_path):
    m = tiny_cnn(tmp_path / "three.onnx", classes=3, manifest=manifest_dict(labels=("a", "b", "c"), positive=None, threshold=None))
    with pytest.raises(Exception, match="binary"):
        Classifier(m, threshold=0.3)


def test_model_without_manifest_runs_with_overrides_and_warns(tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("edgedx"), "propagate", True)  # the CLI turns it off
    m = tiny_cnn(tmp_path / "plain.onnx", channels=3, size=16)
    with caplog.at_level("WARNING", logger="edgedx"):
        clf = Classifier(m, overrides=ManifestOverrides(labels=["cat", "dog"], mean=(0.5,), std=(0.5,)))
    with clf:
        assert clf.classify(frame(20, 20, 3)).label in ("cat", "dog")
    assert "no edgedx manifest" in caplog.text and "scale 1/255" in caplog.text
    assert "mean" not in caplog.text.split("assumed")[1]


def test_manifest_that_does_not_match_the_model_is_refused(tmp_path):
    m = tiny_cnn(tmp_path / "m.onnx", size=32, manifest=manifest_dict(size=64))
    with pytest.raises(ModelError, match="does not match"):
        Classifier(m)
    m3 = tiny_cnn(tmp_path / "m3.onnx", classes=3, manifest=manifest_dict())
    with pytest.raises(ModelError, match="outputs 3 values"):
        Classifier(m3)


def test_explicit_backend_that_cannot_run_is_exit_code_3(model, monkeypatch):
    from edgedx.backends import base

    monkeypatch.setattr(base, "missing_requirements", lambda name: ["tensorrt"] if name == "tensorrt" else [])
    with pytest.raises(BackendUnavailable) as err:
        Classifier(model, backend="tensorrt")
    assert err.value.exit_code == 3 and "pip install" in str(err.value)


def test_unknown_backend_is_a_usage_error(model):
    with pytest.raises(UsageError):
        Classifier(model, backend="tpu")


def test_closed_classifier_refuses_work(model):
    clf = Classifier(model)
    clf.close()
    with pytest.raises(UsageError, match="closed"):  # an error record would look like a bad input
        clf.classify(frame(8, 8))
    with pytest.raises(UsageError, match="closed"):
        list(clf.classify_many([frame(8, 8)]))


def test_one_thread_classifies_while_another_decodes(model, xray_files):
    from edgedx import decode

    with Classifier(model) as clf:
        expected = [clf.classify(f).scores for f in xray_files]
        frames: list = []
        results: list = []

        def decoder():
            for f in xray_files:
                frames.append(decode.decode_file(f, clf.decode_options)[0].image)

        t = threading.Thread(target=decoder)
        t.start()
        t.join()
        worker = threading.Thread(target=lambda: results.extend(clf.classify(x) for x in frames))
        worker.start()
        worker.join()
    for r, e in zip(results, expected):
        assert r.scores == pytest.approx(e, abs=1e-6)


def test_expand_paths_walks_folders_sorted_and_keeps_missing(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b" / "c.dcm").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    out = expand_paths([tmp_path, tmp_path / "gone.png"])
    assert out == [tmp_path / "a.png", tmp_path / "b" / "c.dcm", tmp_path / "gone.png"]


def test_default_model_is_bundled():
    from edgedx import bundled

    path = bundled.default_model()
    assert path.name == bundled.DEFAULT_CPU and path.stat().st_size > 0


def test_pipeline_keeps_order_and_results_whatever_workers_and_batch(model, xray_files, tmp_path):
    bad = tmp_path / "empty.jpeg"
    bad.write_bytes(b"")
    inputs = [*xray_files, bad, *xray_files[:2], tmp_path / "gone.png", xray_files[-1]] * 3
    runs = []
    for workers, batch in ((0, 1), (1, 3), (3, 8)):
        with Classifier(model, batch_size=batch, workers=workers) as clf:
            runs.append(list(clf.classify_many(inputs)))
    ref = runs[0]
    assert [r.path for r in ref] == [str(p) for p in inputs]
    for other in runs[1:]:
        assert [r.status for r in other] == [r.status for r in ref]
        for x, y in zip(ref, other):
            assert x.label == y.label
            if x.score is not None:
                assert abs(x.score - y.score) < 1e-6


def test_stopping_early_leaves_no_threads_behind(model, xray_files):
    with Classifier(model, batch_size=1, workers=2) as clf:
        stream = clf.classify_many(xray_files * 10)
        first = next(stream)
        stream.close()  # what Ctrl-C or a consumer that stops does
    assert first.status == "ok"
    assert not [t for t in threading.enumerate() if t.name.startswith("edgedx-decode")]


def test_two_threads_sharing_one_classifier_get_the_serial_answers(model, xray_files):
    inputs = xray_files * 4
    with Classifier(model, batch_size=3, workers=1) as clf:
        expected = [r.scores for r in clf.classify_many(inputs)]
        outs: dict[int, list] = {}

        def work(k):
            outs[k] = [r.scores for r in clf.classify_many(inputs)]

        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for k in range(3):
        assert len(outs[k]) == len(expected)
        for got, exp in zip(outs[k], expected):
            assert got == pytest.approx(exp, abs=1e-6)


def test_a_failing_batch_gets_error_records_and_the_run_goes_on(model, xray_files, monkeypatch):
    with Classifier(model, batch_size=2, workers=0) as clf:
        real_run, calls = clf.session._run, []

        def flaky(batch):
            calls.append(len(batch))
            if len(calls) == 2:
                raise RuntimeError("device lost")
            return real_run(batch)

        monkeypatch.setattr(clf.session, "_run", flaky)
        results = list(clf.classify_many(xray_files))
    assert [r.status for r in results] == ["ok", "ok", "error", "error", "ok", "ok"]
    assert "device lost" in results[2].error and results[2].path == str(xray_files[2])


def test_bad_arguments_are_usage_errors(model, tmp_path):
    with pytest.raises(UsageError):
        Classifier(model, batch_size=0)
    with pytest.raises(UsageError):
        Classifier(model, threshold=1.5)
    with pytest.raises(UsageError, match="audit"):
        Classifier(model, audit=tmp_path / "no" / "such" / "dir" / "audit.ndjson")


def test_available_backends_reports_missing_hardware(monkeypatch):
    import dataclasses

    from edgedx.backends import base

    monkeypatch.setattr(base, "missing_requirements", lambda name: [])
    entry = dataclasses.replace(base.BACKENDS["tensorrt"], probe="tests.test_api:_no_gpu")
    monkeypatch.setitem(base.BACKENDS, "tensorrt", entry)
    assert base.available_backends() == {"onnxruntime": None, "openvino": None, "tensorrt": "no CUDA device (test)"}


def _no_gpu():
    return "no CUDA device (test)"
