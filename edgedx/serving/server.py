"""Start and stop a real ``tritonserver`` (the binary the ``nvidia-pytriton`` wheel ships) on loopback.

For tests, benchmarks and trying a repository out; production servers run NVIDIA's containers.
What it takes, learnt the hard way (README "Serving on Triton"):

- the *serving environment* is a Python environment with ``nvidia-pytriton``, numpy below 2 (with
  numpy 2 the Python backend returns empty FP32 outputs and crashes on BYTES inputs), and edgedx's
  runtime dependencies; its Python minor version picks the backend stub;
- the wheel's ``backends/`` folder lacks the stub, so a backend folder is assembled from the
  backend library, its utils file and the stub for the serving Python's minor version;
- the stub needs the wheel's bundled libraries and the serving Python's ``LIBDIR`` on
  ``LD_LIBRARY_PATH`` (without them the server hangs rather than exits), and the serving
  environment's ``bin`` first on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgedx.errors import BackendUnavailable

#: Environment variable naming the serving environment's Python (or its folder).
ENV_VARIABLE = "EDGEDX_TRITON_PYTHON"

_PROBE = """
import json, sys, sysconfig, pathlib, numpy
import pytriton
root = pathlib.Path(pytriton.__file__).parent
print(json.dumps({
    "version": f"{sys.version_info.major}.{sys.version_info.minor}",
    "numpy": numpy.__version__,
    "tritonserver": str(root / "tritonserver"),
    "libs": str(root.parent / "nvidia_pytriton.libs"),
    "libdir": sysconfig.get_config_var("LIBDIR") or "",
    "bin": str(pathlib.Path(sys.executable).parent),
}))
"""


@dataclass(frozen=True)
class ServingEnv:
    """A serving environment's facts: where the server, its libraries and the stub are."""

    python: Path
    version: str
    numpy: str
    tritonserver: Path
    libs: Path
    libdir: str
    bin: Path

    @property
    def binary(self) -> Path:
        return self.tritonserver / "bin" / "tritonserver"


def find_env(python: str | Path | None = None) -> ServingEnv:
    """Probe the serving environment (``python``, else ``$EDGEDX_TRITON_PYTHON``).

    Raises:
        BackendUnavailable: none given, or it lacks nvidia-pytriton or has numpy 2.
    """
    python = python or os.environ.get(ENV_VARIABLE)
    if not python:
        raise BackendUnavailable(f"no Triton serving environment: set {ENV_VARIABLE} to its python (see README, Serving on Triton)")
    path = Path(python).absolute()
    if path.is_dir():
        path = path / "bin" / "python"
    try:
        out = subprocess.run([str(path), "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendUnavailable(f"cannot run the serving Python {path}: {exc}") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise BackendUnavailable(f"the serving Python {path} cannot import nvidia-pytriton and numpy: {last}")
    facts = json.loads(out.stdout)
    if int(facts["numpy"].split(".")[0]) >= 2:
        raise BackendUnavailable(f"the serving environment has numpy {facts['numpy']}; Triton's Python backend needs numpy < 2")
    env = ServingEnv(path, facts["version"], facts["numpy"], Path(facts["tritonserver"]), Path(facts["libs"]), facts["libdir"], Path(facts["bin"]))
    if not env.binary.is_file():
        raise BackendUnavailable(f"{env.binary} is missing: nvidia-pytriton ships tritonserver on x86_64 and aarch64 Linux only")
    return env


def backend_folder(env: ServingEnv, into: Path) -> Path:
    """Assemble ``into/python`` (backend library, utils file, the stub for this Python) and return ``into``."""
    stub = env.tritonserver / "python_backend_stubs" / env.version / "triton_python_backend_stub"
    if not stub.is_file():
        raise BackendUnavailable(f"nvidia-pytriton has no Python-backend stub for Python {env.version}")
    python = into / "python"
    python.mkdir(parents=True, exist_ok=True)
    source = env.tritonserver / "backends" / "python"
    for item in (source / "libtriton_python.so", source / "triton_python_backend_utils.py", stub):
        shutil.copy2(item, python / item.name)
    return into


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """A ``tritonserver`` on 127.0.0.1 serving ``repository``; a context manager that stops it.

    Args:
        repository: the model repository.
        env: the serving environment (:func:`find_env`).
        pythonpath: folders the generated ``model.py`` files put first on ``sys.path`` (an edgedx
            source tree that is not installed in the serving environment).
        log_path: where the server's output goes (a temporary file by default).
        timeout_s: how long to wait for the server and its models to be ready.
        extra_args: more ``tritonserver`` options (``--exit-on-error=false``, ``--strict-readiness=false``...).
    """

    def __init__(self, repository: Path, env: ServingEnv, *, pythonpath: list[Path] | None = None,
                 log_path: Path | None = None, timeout_s: float = 120.0, extra_args: tuple[str, ...] = ()) -> None:
        self.repository, self.env, self.timeout_s, self.extra_args = repository, env, timeout_s, extra_args
        self.pythonpath = pythonpath or []
        self.http_port, self.grpc_port = free_port(), free_port()
        self._work = Path(tempfile.mkdtemp(prefix="edgedx-triton-"))
        self.log_path = log_path or self._work / "tritonserver.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready.

        Raises:
            BackendUnavailable: it exited or was not ready in time (the message ends with its log's last line).
        """
        backends = backend_folder(self.env, self._work / "backends")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.env.libs), self.env.libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = os.pathsep.join((str(self.env.bin), env.get("PATH", "")))
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in self.pythonpath)
        env.setdefault("OPENCV_LOG_LEVEL", "OFF")
        cmd = [
            str(self.env.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false", "--exit-timeout-secs=5", "--log-verbose=0", *self.extra_args,
        ]
        log = open(self.log_path, "wb")
        try:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._fail(f"tritonserver exited with code {self._proc.returncode}")
            if self._ready():
                return self
            time.sleep(0.25)
        self._fail(f"tritonserver was not ready after {self.timeout_s:.0f} s")
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _fail(self, what: str) -> None:
        tail = self.log_tail()
        self.stop()
        raise BackendUnavailable(f"{what}; log {self.log_path}: {tail}")

    def log_tail(self, lines: int = 3) -> str:
        """The server's last error lines (its last lines when it logged no error)."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        errors = [t for t in text if t.startswith("E") and "CudaDriverHelper" not in t]
        return " | ".join((errors or text)[-lines:])

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def __enter__(self) -> TritonServer:
        return self if self._proc is not None else self.start()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.stop()
        if exc_type is None:  # on failure the log stays for a look
            shutil.rmtree(self._work, ignore_errors=True)
