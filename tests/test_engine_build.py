"""export.engine: per-version builder flags checked against NVIDIA's documented API, the ONNX
precision check, and build_engine over a fake TensorRT (CPU); a real build under ``-m gpu``."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import export.engine as eng
import export.engine_builders as engine_builders
import export.engine_flags as engine_flags
import export.onnx_precision as onnx_precision
from edgedx.backends.trt_guard import RuntimeFacts, file_problems, runtime_problems
from edgedx.errors import BackendError, BackendUnavailable, ModelError, UsageError
from export.engine import BUILDER_NAMES, RTX_BUILDER_NAMES, parse_batch, profile_shapes
from export.engine_flags import select_flags
from export.onnx_precision import check_precision, inspect_onnx
from tests.test_tensorrt import FakeCuda, attribute_uses

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'edgedx[test]')")
from onnx import TensorProto, helper, numpy_helper

# -- NVIDIA's documented Python API, per major version ---------------------------------------------
# TensorRT 10.x: docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api (Builder,
# IBuilderConfig, NetworkDefinitionCreationFlag, BuilderFlag, OnnxParser...). TensorRT 11.x: the same
# pages for 11.4 plus "Migrating from TensorRT 10.x to 11.x" (Python): BuilderFlag.FP16/INT8/BF16/
# FP8/INT4/FP4/OBEY_/PREFER_PRECISION_CONSTRAINTS, int8_calibrator, set/get_calibration_profile,
# quantization flags and platform_has_fast_fp16/int8 removed; NetworkDefinitionCreationFlag.
# STRONGLY_TYPED kept but deprecated and ignored (strong typing is always on). The 11.x BuilderFlag,
# MemoryPoolType, DeviceType and HardwareCompatibilityLevel members below match tensorrt_lean 11.4.

_COMMON = {
    "": ["__version__", "Logger", "ILogger", "Builder", "OnnxParser", "Runtime", "NetworkDefinitionCreationFlag", "BuilderFlag",
         "MemoryPoolType", "HardwareCompatibilityLevel", "DeviceType"],
    "ILogger": ["Severity"],
    "MemoryPoolType": ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM", "TACTIC_SHARED_MEMORY"],
    "DeviceType": ["GPU", "DLA"],
    "Builder": ["create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network",
                "build_engine_with_config", "is_network_supported", "num_DLA_cores", "max_DLA_batch_size", "logger", "max_threads", "reset"],
    "IBuilderConfig": ["set_flag", "clear_flag", "get_flag", "flags", "set_memory_pool_limit", "get_memory_pool_limit",
                       "add_optimization_profile", "num_optimization_profiles", "create_timing_cache", "set_timing_cache",
                       "get_timing_cache", "default_device_type", "DLA_core", "hardware_compatibility_level", "set_device_type",
                       "get_device_type", "can_run_on_DLA", "builder_optimization_level", "profiling_verbosity", "engine_capability",
                       "avg_timing_iterations", "set_tactic_sources", "set_preview_feature", "max_aux_streams", "reset"],
    "ITimingCache": ["serialize", "combine", "reset"],
    "IOptimizationProfile": ["set_shape", "get_shape", "set_shape_input", "get_shape_input"],
    "OnnxParser": ["parse", "parse_from_file", "parse_with_weight_descriptors", "supports_model", "supports_operator",
                   "num_errors", "get_error", "clear_errors", "set_flag", "clear_flag", "get_flag", "get_used_vc_plugin_libraries"],
    "INetworkDefinition": ["num_inputs", "num_outputs", "num_layers", "get_input", "get_output", "get_layer", "name", "mark_output", "add_input"],
    "ITensor": ["name", "shape", "dtype", "is_network_input", "is_network_output"],
    "IHostMemory": ["dtype", "nbytes"],
}
_TRT10 = {
    "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH", "STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"],
    "BuilderFlag": ["FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
                    "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS",
                    "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE",
                    "WEIGHT_STREAMING", "STRIP_PLAN", "REFIT_IDENTICAL"],
    "HardwareCompatibilityLevel": ["NONE", "AMPERE_PLUS"],
    "IBuilderConfig": ["int8_calibrator", "set_calibration_profile", "get_calibration_profile", "set_quantization_flag"],
    "Builder": ["platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32"],
}
_TRT11 = {
    "NetworkDefinitionCreationFlag": ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"],
    "BuilderFlag": ["DEBUG", "DIRECT_IO", "DISABLE_COMPILATION_CACHE", "DISABLE_TIMING_CACHE", "DISTRIBUTIVE_INDEPENDENCE",
                    "EDITABLE_TIMING_CACHE", "ERROR_ON_TIMING_CACHE_MISS", "EXCLUDE_LEAN_RUNTIME", "GPU_FALLBACK", "MONITOR_MEMORY",
                    "REFIT", "REFIT_IDENTICAL", "REFIT_INDIVIDUAL", "SAFETY_SCOPE", "SPARSE_WEIGHTS", "STRICT_NANS", "STRIP_PLAN",
                    "TF32", "VERSION_COMPATIBLE", "WEIGHT_STREAMING"],
    "HardwareCompatibilityLevel": ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"],
}


def _documented(extra: dict[str, list[str]]) -> frozenset[str]:
    out = set()
    for table in (_COMMON, extra):
        for cls, members in table.items():
            out.update(f"{cls}.{m}" if cls else m for m in members)
    return frozenset(out)


DOCUMENTED = {10: _documented(_TRT10), 11: _documented(_TRT11)}
REMOVED_IN_11 = ("BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.BF16", "BuilderFlag.FP8",
                 "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "IBuilderConfig.int8_calibrator")


def all_flag_choices(major: int):
    """Every valid option combination's BuildFlags for ``major``."""
    for precision, dla, fallback, vc, lean, hc in itertools.product(engine_flags.PRECISIONS, (None, 0), (False, True), (False, True), (False, True), (False, True)):
        try:
            yield select_flags(major, precision, dla_core=dla, gpu_fallback=fallback, version_compatible=vc,
                               exclude_lean_runtime=lean, hardware_compatible=hc)
        except UsageError:
            continue


def test_the_documentation_lists_agree_on_what_11_removed():
    for name in REMOVED_IN_11:
        assert name in DOCUMENTED[10] and name not in DOCUMENTED[11]


@pytest.mark.parametrize("major", [10, 11])
def test_names_build_engine_uses_are_documented(major):
    assert sorted(set(BUILDER_NAMES) - DOCUMENTED[major]) == []


@pytest.mark.parametrize("major", [10, 11])
def test_every_flag_the_table_picks_is_documented_for_that_version(major):
    used = {name for flags in all_flag_choices(major) for name in flags.names()}
    assert used, "no valid combination?"
    assert sorted(used - DOCUMENTED[major]) == []


def test_real_tensorrt_lean_11_matches_the_table():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean not installed (pip install tensorrt-lean-cu13)")
    if int(trt.__version__.split(".")[0]) != 11:
        pytest.skip(f"tensorrt_lean {trt.__version__} is not 11.x")
    used = {name for flags in all_flag_choices(11) for name in flags.names() if not name.startswith("NetworkDefinition")}
    for name in sorted(used | {"MemoryPoolType.WORKSPACE", "ITimingCache.serialize", "IOptimizationProfile.set_shape"}):
        cls, member = name.split(".")
        assert hasattr(getattr(trt, cls), member), name
    for name in ("FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS"):
        assert not hasattr(trt.BuilderFlag, name), f"BuilderFlag.{name} is back in {trt.__version__}"
    assert sorted(_TRT11["BuilderFlag"]) == sorted(m for m in dir(trt.BuilderFlag) if m.isupper())


BUILD_RECEIVERS = {"trt": "", "trt_builder": "Builder", "config": "IBuilderConfig", "parser": "OnnxParser",
                   "network": "INetworkDefinition", "profile": "IOptimizationProfile"}


def test_build_engine_source_uses_only_listed_names():
    modules = (eng, engine_flags, onnx_precision, engine_builders)
    used = set().union(*(attribute_uses(Path(m.__file__), BUILD_RECEIVERS) for m in modules))
    assert "Builder.build_serialized_network" in used and "IBuilderConfig.set_compute_capability" in used
    assert sorted(used - set(BUILDER_NAMES) - set(RTX_BUILDER_NAMES)) == []


# -- flag selection --------------------------------------------------------------------------------


def test_tensorrt_11_never_sets_a_precision_flag():
    for flags in all_flag_choices(11):
        assert not {"BuilderFlag.FP16", "BuilderFlag.INT8"} & set(flags.builder_flags)
        assert flags.network_flags == ()


def test_tensorrt_10_precision_flags():
    assert select_flags(10, "fp32") == engine_flags.BuildFlags()
    assert select_flags(10, "fp16").network_flags == ("NetworkDefinitionCreationFlag.STRONGLY_TYPED",)
    assert select_flags(10, "fp16").builder_flags == ()
    assert select_flags(10, "int8").builder_flags == ("BuilderFlag.INT8",)
    assert select_flags(10, "int8").network_flags == ()
    dla = select_flags(10, "fp16", dla_core=0, gpu_fallback=True)
    assert dla.builder_flags == ("BuilderFlag.FP16", "BuilderFlag.GPU_FALLBACK")
    assert dla.device_type == "DeviceType.DLA"


def test_compatibility_flags():
    flags = select_flags(11, "fp32", version_compatible=True, exclude_lean_runtime=True, hardware_compatible=True)
    assert flags.builder_flags == ("BuilderFlag.VERSION_COMPATIBLE", "BuilderFlag.EXCLUDE_LEAN_RUNTIME")
    assert flags.hardware_compatibility_level == "HardwareCompatibilityLevel.AMPERE_PLUS"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precision": "fp32", "dla_core": 0}, "DLA runs FP16 and INT8 only"),
        ({"precision": "fp16", "gpu_fallback": True}, "--gpu-fallback applies only with --dla-core"),
        ({"precision": "fp16", "exclude_lean_runtime": True}, "only with --version-compatible"),
        ({"precision": "fp16", "dla_core": 0, "hardware_compatible": True}, "GPUs only"),
        ({"precision": "bf16"}, "unknown precision"),
    ],
)
def test_inconsistent_options_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        select_flags(10, **kwargs)


@pytest.mark.parametrize("major", [8, 9, 12])
def test_unsupported_tensorrt_major(major):
    with pytest.raises(BackendUnavailable, match=f"TensorRT {major}.x is not supported"):
        select_flags(major, "fp32")


# -- tiny ONNX models -------------------------------------------------------------------------------

MANIFEST = {
    "schema": "edgedx.manifest",
    "schema_version": 1,
    "labels": ["NORMAL", "PNEUMONIA"],
    "input": {"name": "input", "layout": "NCHW", "height": 4, "width": 4, "channels": 1},
    "preprocess": {"resize": "stretch", "scale": 1 / 255, "mean": [0.5], "std": [0.25]},
    "output": {"name": "logits", "activation": "softmax"},
    "positive_label": "PNEUMONIA",
    "threshold": 0.5,
    "precision": "fp32",
    "provenance": {"source": "tests/test_engine_build.py"},
}


def tiny_onnx(path: Path, precision: str = "fp32", zero_point: int = TensorProto.INT8, zp_value: int = 0, batch="N") -> Path:
    """input (N,1,4,4) -> Conv -> GlobalAveragePool -> Flatten -> Gemm -> logits (N,2), in fp32,
    fp16 (FP16 weights between Casts) or int8 (Q/DQ on the input and DQ on the conv weights)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32)
    fw = rng.normal(0, 0.5, (2, 2)).astype(np.float32)
    npf = np.float16 if precision == "fp16" else np.float32
    inits = [numpy_helper.from_array(fw.astype(npf), "fw"), numpy_helper.from_array(np.zeros(2, npf), "fb")]
    nodes = []
    x = "input"
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16))
        x = "x16"
        inits.append(numpy_helper.from_array(w.astype(np.float16), "w"))
    elif precision == "int8":
        zp_np = np.int8 if zero_point == TensorProto.INT8 else np.uint8
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(zp_value, zp_np), "zp"),
            numpy_helper.from_array(np.clip(np.round(w / 0.02), -127, 127).astype(np.int8), "wq"),
            numpy_helper.from_array(np.array(0.02, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wzp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["xq"], name="q_in"),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq_in"),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], name="dq_w"),
        ]
        x = "xdq"
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes += [
        helper.make_node("Conv", [x, "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["y"], ["logits"], to=TensorProto.FLOAT))
    else:
        nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"edgedx.manifest": json.dumps(MANIFEST)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# -- precision check ---------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_detected_precision(tmp_path, precision):
    info = inspect_onnx(onnx.load(str(tiny_onnx(tmp_path / "m.onnx", precision))))
    assert info.detected == precision
    check_precision(precision, info, "m.onnx")  # matching: no error


def test_fp16_fraction_counts_weight_elements(tmp_path):
    info = inspect_onnx(onnx.load(str(tiny_onnx(tmp_path / "m.onnx", "fp16"))))
    assert info.float_elements == {"float16": 18 + 4 + 2}
    assert info.fp16_fraction == 1.0


@pytest.mark.parametrize(
    "have, want, message",
    [
        ("fp32", "fp16", "holds no FP16 weights .* modelopt.onnx.autocast"),
        ("fp32", "int8", "no QuantizeLinear/DequantizeLinear nodes .* ask --precision fp32"),
        ("fp16", "fp32", "holds FP16 weights \\(100% of weights\\): ask --precision fp16"),
        ("int8", "fp16", "Q/DQ \\(INT8\\) model; ask --precision int8"),
        ("int8", "fp32", "Q/DQ \\(INT8\\) model; ask --precision int8"),
    ],
)
def test_precision_mismatch_is_refused(tmp_path, have, want, message):
    info = inspect_onnx(onnx.load(str(tiny_onnx(tmp_path / "m.onnx", have))))
    with pytest.raises(UsageError, match=message) as err:
        check_precision(want, info, "m.onnx")
    assert err.value.exit_code == 2


def test_uint8_qdq_is_refused_as_the_cpu_flavour(tmp_path):
    info = inspect_onnx(onnx.load(str(tiny_onnx(tmp_path / "m.onnx", "int8", zero_point=TensorProto.UINT8, zp_value=128))))
    with pytest.raises(UsageError, match=r"m.onnx is the CPU flavour of edgedx export quantize \(uint8 activations, U8S8.*first q_in.*--target tensorrt"):
        check_precision("int8", info, "m.onnx")


def test_nonzero_int8_zero_point_is_refused(tmp_path):
    info = inspect_onnx(onnx.load(str(tiny_onnx(tmp_path / "m.onnx", "int8", zp_value=3))))
    assert "q_in: non-zero zero point (asymmetric)" in info.zero_point_problems


# -- profile and batch ---------------------------------------------------------------------------------


def test_parse_batch():
    assert parse_batch("1,8,32") == (1, 8, 32)
    assert parse_batch("4") == (1, 4, 4)  # every batch up to 4 runs: a folder's tail gets its answers
    assert parse_batch("4,4,4") == (4, 4, 4)
    for bad in ("8,1,32", "0,1,2", "a,b,c", "1,2"):
        with pytest.raises(UsageError, match="--batch"):
            parse_batch(bad)


def test_profile_shapes():
    assert profile_shapes(["N", 3, 224, 224], (1, 8, 32)) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert profile_shapes([1, 3, 8, 8], (1, 1, 1)) is None
    assert profile_shapes(["N", 3, "H", "W"], (1, 2, 4), (3, 64, 64))[2] == (4, 3, 64, 64)
    with pytest.raises(UsageError, match="fixes batch size 1"):
        profile_shapes([1, 3, 8, 8], (1, 8, 32))
    with pytest.raises(ModelError, match="dynamic"):
        profile_shapes(["N", 3, "H", "W"], (1, 1, 1))


# -- build_engine over a fake TensorRT ---------------------------------------------------------------


class Guarded:
    """Members outside the version's documented API raise AttributeError."""

    _cls = ""
    _allowed: frozenset = frozenset()

    def __getattribute__(self, name):
        if not name.startswith("_"):
            cls = object.__getattribute__(self, "_cls")
            full = f"{cls}.{name}" if cls else name
            if full not in object.__getattribute__(self, "_allowed"):
                raise AttributeError(f"{full} is not documented for this TensorRT version")
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        if not name.startswith("_") and f"{self._cls}.{name}" not in self._allowed:
            raise AttributeError(f"{self._cls}.{name} is not documented for this TensorRT version")
        object.__setattr__(self, name, value)


def fake_builder_trt(major: int, record: dict):
    allowed = DOCUMENTED[major]

    def obj(cls, **attrs):
        o = type(cls, (Guarded,), {"_cls": cls, "_allowed": allowed})()
        for k, v in attrs.items():
            object.__setattr__(o, k, v)
        return o

    def enum(cls, ints=False):
        members = [n.split(".", 1)[1] for n in allowed if n.startswith(cls + ".")]
        return obj(cls, **{m: (i if ints else f"{cls}.{m}") for i, m in enumerate(sorted(members))})

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    def Builder(logger):
        record["builders"] = record.get("builders", 0) + 1
        config = obj("IBuilderConfig")
        record["config"] = config
        object.__setattr__(config, "_flags", [])
        object.__setattr__(config, "set_flag", lambda f: config._flags.append(f))
        object.__setattr__(config, "set_memory_pool_limit", lambda pool, n: record.update(pool=(pool, n)))
        object.__setattr__(config, "add_optimization_profile", lambda p: record.update(profile=p._shapes))

        def create_timing_cache(blob):
            return obj("ITimingCache", serialize=lambda: b"CACHE:" + bytes(blob[-20:]) + b"+")

        def set_timing_cache(cache, ignore_mismatch):
            record["cache_set"] = cache
            return True

        object.__setattr__(config, "create_timing_cache", create_timing_cache)
        object.__setattr__(config, "set_timing_cache", set_timing_cache)
        object.__setattr__(config, "get_timing_cache", lambda: record["cache_set"])

        def create_network(flags):
            record["network_flags"] = flags
            return obj("INetworkDefinition", num_inputs=1, get_input=lambda i: obj("ITensor", name="input"))

        def create_optimization_profile():
            p = obj("IOptimizationProfile")
            object.__setattr__(p, "set_shape", lambda name, lo, opt, hi: object.__setattr__(p, "_shapes", (name, lo, opt, hi)))
            return p

        def build_serialized_network(network, config):
            record["builder_flags"] = list(config._flags)
            return b"PLAN" + json.dumps(sorted(map(str, config._flags))).encode()

        return obj("Builder", create_network=create_network, create_builder_config=lambda: config,
                   create_optimization_profile=create_optimization_profile, build_serialized_network=build_serialized_network,
                   num_DLA_cores=2)

    def OnnxParser(network, logger):
        return obj("OnnxParser", parse_from_file=lambda path: True, num_errors=0, get_error=lambda i: "")

    trt = obj("", __version__=f"{major}.3.0.30" if major == 10 else "11.4.0.106", ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser,
              NetworkDefinitionCreationFlag=enum("NetworkDefinitionCreationFlag", ints=True), BuilderFlag=enum("BuilderFlag"),
              MemoryPoolType=enum("MemoryPoolType"), HardwareCompatibilityLevel=enum("HardwareCompatibilityLevel"),
              DeviceType=enum("DeviceType"))
    return trt


@pytest.fixture
def fake_build(monkeypatch):
    """build_engine against a fake TensorRT ``major`` (set state['major']) and a fake CUDA device."""
    state = {"major": 10, "cuda": FakeCuda(), "record": {}}
    def fake_import(requested):
        trt = fake_builder_trt(state["major"], state["record"])
        return engine_builders.Builder("tensorrt", trt, trt.__version__)

    monkeypatch.setattr(eng, "_import_builder", fake_import)
    monkeypatch.setattr("edgedx.cuda.open_driver", lambda binding="auto": state["cuda"])
    return state


def test_build_writes_the_plan_unchanged_and_a_sidecar(tmp_path, fake_build):
    model = tiny_onnx(tmp_path / "model.onnx", "fp16")
    out = tmp_path / "engines" / "model.engine"
    report = eng.build_engine(model, out, precision="fp16", batch=(1, 4, 8), workspace_mb=256, timing_cache=tmp_path / "tc.bin")
    plan = out.read_bytes()
    assert plan.startswith(b"PLAN")  # nothing prepended
    assert report.sha256 == hashlib.sha256(plan).hexdigest()
    rec = fake_build["record"]
    assert rec["network_flags"] == 1 << sorted(_TRT10["NetworkDefinitionCreationFlag"]).index("STRONGLY_TYPED")
    assert rec["builder_flags"] == []
    assert rec["pool"] == ("MemoryPoolType.WORKSPACE", 256 << 20)
    assert rec["profile"] == ("input", (1, 1, 4, 4), (4, 1, 4, 4), (8, 1, 4, 4))

    sidecar = json.loads((out.parent / "model.engine.json").read_text())
    assert sidecar["labels"] == MANIFEST["labels"] and sidecar["precision"] == "fp16"
    section = sidecar["engine"]
    assert section["sha256"] == report.sha256
    assert section["source_onnx"] == "../model.onnx"
    assert section["source_onnx_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert section["tensorrt_version"] == "10.3.0.30" and section["compute_capability"] == "8.7" and section["gpu_name"] == "Fake GPU"
    assert section["profile"] == {"input": "input", "min": [1, 1, 4, 4], "opt": [4, 1, 4, 4], "max": [8, 1, 4, 4]}
    assert section["build"]["network_flags"] == ["NetworkDefinitionCreationFlag.STRONGLY_TYPED"]
    assert section["version_compatible"] is False and section["hardware_compatible"] is False

    # The runtime's guard accepts what the builder wrote, on the same TensorRT and GPU.
    assert file_problems(sidecar, report.sha256, "model.engine.json") == []
    assert runtime_problems(section, RuntimeFacts("10.3.0.30", False, "8.7", "Fake GPU"), False) == []

    assert report.timing_cache_saved and not report.timing_cache_loaded
    again = eng.build_engine(model, out, precision="fp16", batch=(1, 4, 8), timing_cache=tmp_path / "tc.bin")
    assert again.timing_cache_loaded


def test_tensorrt_11_builds_int8_from_qdq_without_flags(tmp_path, fake_build):
    fake_build["major"] = 11
    model = tiny_onnx(tmp_path / "model.onnx", "int8")
    report = eng.build_engine(model, precision="int8", batch=(2, 2, 2))
    assert report.engine == tmp_path / "model.engine"
    assert fake_build["record"]["network_flags"] == 0
    assert fake_build["record"]["builder_flags"] == []
    assert report.tensorrt_version == "11.4.0.106"


def test_tensorrt_10_int8_sets_the_int8_flag(tmp_path, fake_build):
    model = tiny_onnx(tmp_path / "model.onnx", "int8")
    eng.build_engine(model, precision="int8")
    assert fake_build["record"]["builder_flags"] == ["BuilderFlag.INT8"]


def test_dla_and_compatibility_options_reach_the_config(tmp_path, fake_build):
    model = tiny_onnx(tmp_path / "model.onnx", "fp16")
    eng.build_engine(model, precision="fp16", batch=(4, 4, 4), dla_core=1, gpu_fallback=True)
    config = fake_build["record"]["config"]
    assert config.default_device_type == "DeviceType.DLA" and config.DLA_core == 1
    assert fake_build["record"]["builder_flags"] == ["BuilderFlag.FP16", "BuilderFlag.GPU_FALLBACK"]
    report = eng.build_engine(model, tmp_path / "vc.engine", precision="fp16", version_compatible=True, hardware_compatible=True)
    section = json.loads(report.sidecar.read_text())["engine"]
    assert section["version_compatible"] is True and section["hardware_compatible"] is True
    assert fake_build["record"]["config"].hardware_compatibility_level == "HardwareCompatibilityLevel.AMPERE_PLUS"


def test_dla_needs_a_fixed_batch(tmp_path, fake_build):
    model = tiny_onnx(tmp_path / "model.onnx", "fp16")
    with pytest.raises(UsageError, match="DLA needs a fixed batch"):
        eng.build_engine(model, precision="fp16", batch=(1, 4, 8), dla_core=0)


def test_precision_mismatch_is_refused_before_any_tensorrt_object(tmp_path, fake_build):
    model = tiny_onnx(tmp_path / "model.onnx", "fp32")
    with pytest.raises(UsageError, match="holds no FP16 weights"):
        eng.build_engine(model, precision="fp16")
    assert "builders" not in fake_build["record"]
    assert not (tmp_path / "model.engine").exists()


def test_no_cuda_device_is_refused_before_any_tensorrt_object(tmp_path, fake_build):
    fake_build["cuda"] = FakeCuda(devices=0)
    model = tiny_onnx(tmp_path / "model.onnx", "fp32")
    with pytest.raises(BackendUnavailable, match="no CUDA device") as info:
        eng.build_engine(model, precision="fp32")
    assert info.value.exit_code == 3
    assert "builders" not in fake_build["record"]


def test_onnx_without_manifest_is_refused(tmp_path, fake_build):
    model = tiny_onnx(tmp_path / "model.onnx", "fp32")
    m = onnx.load(str(model))
    del m.metadata_props[:]
    onnx.save(m, str(model))
    with pytest.raises(ModelError, match="carries no edgedx manifest"):
        eng.build_engine(model, precision="fp32")


def test_built_engine_opens_in_the_session(tmp_path, fake_build, monkeypatch):
    """Builder and runtime agree end to end (fake TensorRT on both sides)."""
    import edgedx.backends.tensorrt as trt_backend
    from tests.test_tensorrt import FakeTRT

    model = tiny_onnx(tmp_path / "model.onnx", "fp32")
    report = eng.build_engine(model, precision="fp32", batch=(1, 2, 4))
    cuda = FakeCuda()
    monkeypatch.setattr(trt_backend, "open_driver", lambda binding="auto": cuda)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda builder="tensorrt": (FakeTRT(cuda, version=report.tensorrt_version), False))
    with trt_backend.TensorRTSession(report.engine) as sess:
        assert sess.describe()["precision"] == "fp32"
        assert sess.manifest.labels == ("NORMAL", "PNEUMONIA")


def test_engine_command(tmp_path, fake_build):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from export.engine_cli import engine_command

    app = typer.Typer()
    app.command("engine")(engine_command)
    app.command("other")(lambda: None)  # two commands: "engine" is a subcommand as under `edgedx export`
    model = tiny_onnx(tmp_path / "model.onnx", "fp16")
    result = CliRunner().invoke(app, ["engine", str(model), "--precision", "fp16", "--batch", "1,2,4", "--workspace", "64"])
    assert result.exit_code == 0, result.output
    assert "model.engine" in result.output and "fp16" in result.output and "batch 1x2x4" in result.output
    result = CliRunner().invoke(app, ["engine", str(model), "--precision", "fp32"])
    assert isinstance(result.exception, UsageError)
    assert "holds FP16 weights" in str(result.exception)
    result = CliRunner().invoke(app, ["engine", str(model), "--precision", "fp16", "--json"])
    assert json.loads(result.output)["precision"] == "fp16"


# -- real TensorRT (pytest -m gpu) -------------------------------------------------------------------


@pytest.fixture
def real_builder():
    from tests.conftest import cuda_device

    cuda_device()
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("full TensorRT not installed (pip install tensorrt): building needs it")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_gpu_build_and_run_matches_onnxruntime(tmp_path, real_builder, precision):
    import onnxruntime as ort

    from edgedx.backends.base import SessionOptions
    from edgedx.backends.tensorrt import TensorRTSession

    model = tiny_onnx(tmp_path / "model.onnx", precision)
    report = eng.build_engine(model, precision=precision, batch=(1, 4, 8), timing_cache=tmp_path / "tc.bin")
    x = np.random.default_rng(1).normal(0, 1, (4, 1, 4, 4)).astype(np.float32)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with TensorRTSession(report.engine, SessionOptions(cuda_graph=True)) as sess:
        for _ in range(3):  # warm-up, capture, replay
            buf = sess.input_buffer(4)
            buf[:] = x
            got = sess.run(buf)
        info = sess.describe()
        timings = sess.last_timings()
    tol = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}[precision]
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    assert info["precision"] == precision
    assert set(timings) == {"h2d", "compute", "d2h"} and all(v >= 0 for v in timings.values())
    print(precision, info, timings)


@pytest.mark.gpu
def test_gpu_truncated_plan_is_a_clear_error_not_a_crash(tmp_path, real_builder):
    from edgedx.backends.tensorrt import EngineGuardError, TensorRTSession

    report = eng.build_engine(tiny_onnx(tmp_path / "model.onnx"), precision="fp32")
    plan = report.engine.read_bytes()[: report.size_bytes // 2]
    report.engine.write_bytes(plan)
    sidecar = json.loads(report.sidecar.read_text())
    sidecar["engine"]["sha256"] = hashlib.sha256(plan).hexdigest()  # past the hash guard, to TensorRT itself
    report.sidecar.write_text(json.dumps(sidecar))
    with pytest.raises(EngineGuardError, match="could not deserialize model.engine") as info:
        TensorRTSession(report.engine)
    assert info.value.fallback_onnx == tmp_path / "model.onnx"


# -- first-contact fixes: what the build report and the sidecar may claim --------------------------------


def _after_builder(monkeypatch, change) -> None:
    """Run ``change()`` right after the fake TensorRT's Builder is made (its config exists then)."""
    original = eng._import_builder

    def patched(requested):
        chosen = original(requested)
        make = chosen.module.Builder

        def builder(logger):
            b = make(logger)
            change()
            return b

        object.__setattr__(chosen.module, "Builder", builder)
        return chosen

    monkeypatch.setattr(eng, "_import_builder", patched)


def test_an_unreadable_timing_cache_is_reported_as_replaced_not_loaded(tmp_path, fake_build, monkeypatch):
    """TensorRT answers a foreign or corrupt cache with an *empty* cache and a warning, not an error."""
    real_builder = fake_build["record"]
    model = tiny_onnx(tmp_path / "model.onnx", "fp16")
    cache = tmp_path / "tc.bin"
    cache.write_bytes(b"garbage")
    _after_builder(monkeypatch, lambda: object.__setattr__(
        real_builder["config"], "create_timing_cache", lambda blob: type("C", (), {"serialize": lambda self: b"EMPTY"})()))
    report = eng.build_engine(model, precision="fp16", timing_cache=cache)
    assert report.timing_cache_state is eng.CacheState.REPLACED and not report.timing_cache_loaded
    assert "was unreadable here, TensorRT started an empty one" in report.summary()
    assert json.loads(report.sidecar.read_text())["engine"]["build"]["timing_cache_state"] == "replaced"


def test_a_new_timing_cache_is_reported_as_new(tmp_path, fake_build):
    report = eng.build_engine(tiny_onnx(tmp_path / "model.onnx", "fp16"), precision="fp16", timing_cache=tmp_path / "tc.bin")
    assert report.timing_cache_state is eng.CacheState.NEW and report.timing_cache_saved


def test_hardware_compatibility_the_builder_ignores_is_refused_not_recorded(tmp_path, fake_build, monkeypatch):
    def ignore():
        cls = type(fake_build["record"]["config"])
        cls.hardware_compatibility_level = property(lambda self: "HardwareCompatibilityLevel.NONE", lambda self, v: None)

    _after_builder(monkeypatch, ignore)
    model = tiny_onnx(tmp_path / "model.onnx", "fp16")
    with pytest.raises(BackendError, match="did not keep --hardware-compatible"):
        eng.build_engine(model, precision="fp16", hardware_compatible=True)
    assert not (tmp_path / "model.engine").exists() and not (tmp_path / "model.engine.json").exists()


def test_a_name_missing_from_the_installed_tensorrt_is_a_clean_error():
    trt = type("trt", (), {"__version__": "10.0.1", "BuilderFlag": type("BuilderFlag", (), {})})
    with pytest.raises(BackendUnavailable, match="TensorRT 10.0.1 has no BuilderFlag.INT8, which this build needs") as info:
        eng._resolve(trt, "BuilderFlag.INT8")
    assert info.value.exit_code == 3


def test_the_default_profile_is_1_8_16_or_the_onnx_fixed_batch():
    assert profile_shapes(["N", 1, 8, 8], None) == ((1, 1, 8, 8), (8, 1, 8, 8), (16, 1, 8, 8))
    assert profile_shapes([4, 1, 8, 8], None) is None


def test_default_build_profile_lets_every_batch_up_to_16_run(tmp_path, fake_build):
    report = eng.build_engine(tiny_onnx(tmp_path / "model.onnx", "fp32"), precision="fp32")
    assert fake_build["record"]["profile"] == ("input", (1, 1, 4, 4), (8, 1, 4, 4), (16, 1, 4, 4))
    assert "batch 1x8x16" in report.summary()


def test_dla_asks_for_a_fixed_batch_in_the_new_notation(tmp_path, fake_build):
    with pytest.raises(UsageError, match="give --batch N,N,N"):
        eng.build_engine(tiny_onnx(tmp_path / "model.onnx", "fp16"), precision="fp16", batch=parse_batch("4"), dla_core=0)


# -- choosing the builder ------------------------------------------------------------------------------


def _importer(available: dict):
    def importer(name):
        if name not in available:
            exc = ImportError(f"No module named {name!r}")
            exc.name = name
            raise exc
        return available[name]

    return importer


def test_auto_prefers_tensorrt_then_tensorrt_rtx():
    full, rtx = type("m", (), {"__version__": "10.3.0"}), type("m", (), {"__version__": "1.7.1.116"})
    assert engine_builders.choose_builder("auto", _importer({"tensorrt": full, "tensorrt_rtx": rtx})).name == "tensorrt"
    chosen = engine_builders.choose_builder("auto", _importer({"tensorrt_rtx": rtx}))
    assert (chosen.name, chosen.version, chosen.needs_gpu, chosen.label) == ("tensorrt-rtx", "1.7.1.116", False, "TensorRT-RTX")


def test_missing_builders_are_clean_errors():
    with pytest.raises(BackendUnavailable, match=r"tensorrt is not installed.*tensorrt-rtx is not installed \(pip install 'edgedx\[rtx\]'") as info:
        engine_builders.choose_builder("auto", _importer({}))
    assert info.value.exit_code == 3
    with pytest.raises(BackendUnavailable, match=r"tensorrt-rtx is not installed"):
        engine_builders.choose_builder("tensorrt-rtx", _importer({"tensorrt": type("m", (), {"__version__": "10.3"})}))
    with pytest.raises(BackendUnavailable, match="tensorrt has no __version__: a broken install"):
        engine_builders.choose_builder("tensorrt", _importer({"tensorrt": type("m", (), {})}))
    with pytest.raises(UsageError, match="unknown builder 'trtx'"):
        engine_builders.choose_builder("trtx")


def test_parse_compute_capabilities():
    assert engine_builders.parse_compute_capabilities("12.0, 8.6,8.9,8.6") == ("8.6", "8.9", "12.0")
    assert engine_builders.parse_compute_capabilities(None) is None
    with pytest.raises(UsageError, match="'9.0' is not one TensorRT-RTX can target"):
        engine_builders.parse_compute_capabilities("8.6,9.0")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"version_compatible": True}, "--version-compatible"), ({"hardware_compatible": True}, "--hardware-compatible"),
     ({"dla_core": 0}, "--dla-core"), ({"dla_core": 0, "gpu_fallback": True}, "--gpu-fallback")],
)
def test_rtx_refuses_what_it_cannot_honour(kwargs, message):
    with pytest.raises(UsageError, match=f"TensorRT-RTX cannot honour.*{message}"):
        select_flags(1, "fp16", builder="tensorrt-rtx", **kwargs)
    assert select_flags(1, "int8", builder="tensorrt-rtx") == engine_flags.BuildFlags()  # strongly typed: no precision flag


def test_compute_capability_with_the_tensorrt_builder_is_refused(tmp_path, fake_build):
    with pytest.raises(UsageError, match="--compute-capability applies to --builder tensorrt-rtx"):
        eng.build_engine(tiny_onnx(tmp_path / "model.onnx", "fp16"), precision="fp16", compute_capabilities=("8.6",))
