"""Start and stop a real Triton Inference Server on a model repository.

Which binary: `$GPTOSS_TRITONSERVER` if set, else a system `tritonserver` on PATH (NVIDIA's Triton containers,
with their own backends under /opt/tritonserver/backends), else the one bundled in the `nvidia-pytriton` wheel
(Triton 2.51 with the Python backend; runs on CPU-only machines). For the bundled one we build a backend folder of
links (libtriton_python.so, triton_python_backend_utils.py and the stub for the running Python version) in a temp
dir, put this interpreter's bin dir first on PATH (the Python-backend stub runs the Python it finds there, so the
models share this environment, which must keep numpy < 2) and Python's lib dir on LD_LIBRARY_PATH.

Each server gets its own Python-backend shared-memory prefix, so stop() removes exactly the
/dev/shm/triton_python_backend_shm_region_* files this server created, even after a crash.

    with TritonServer(repo) as srv:          # binds 127.0.0.1, free ports
        srv.grpc_url                         # "127.0.0.1:PORT"
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from model_repo.requests import CRASH_FILE_ENV, DRAIN_FILE_ENV

SHM_DIR = "/dev/shm"
SHM_PREFIX = "triton_python_backend_shm_region"
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=1048576:glibc.malloc.arena_max=4"


class ServerError(RuntimeError):
    """The server could not be found, did not start, or died."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_answering(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str | None:
    """'PID (command line)' of the process listening on TCP `port`, from /proc (None if it cannot be told)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:   # 0A: LISTEN
                inodes.add(f[9])
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    return f"{proc.name} ({cmd[:160]})"
        except OSError:
            continue
    return None


def _die_with_parent(parent_pid: int):
    """preexec_fn: the server gets SIGTERM when the process that started it dies, even by SIGKILL."""
    def set_pdeathsig():
        import ctypes
        pr_set_pdeathsig = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:          # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return set_pdeathsig


def _pytriton_root() -> Path | None:
    try:
        import pytriton  # noqa: F401 (only its location)
    except ImportError:
        return None
    root = Path(pytriton.__file__).parent / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def find_tritonserver() -> tuple[Path, Path | None]:
    """-> (binary, bundled root or None for a system install)."""
    override = os.environ.get("GPTOSS_TRITONSERVER")
    if override:
        p = Path(override)
        if not p.exists():
            raise ServerError(f"GPTOSS_TRITONSERVER={override}: no such file")
        root = p.parent.parent
        return p, (root if (root / "python_backend_stubs").is_dir() else None)
    system = shutil.which("tritonserver")
    # A `tritonserver` on PATH that lives in our own venv bin would be the PyPI placeholder package.
    if system and Path(system).resolve().parent != Path(sys.executable).parent.resolve():
        return Path(system), None
    root = _pytriton_root()
    if root is None:
        raise ServerError("no tritonserver found: install the nvidia-pytriton wheel (pip install nvidia-pytriton) "
                          "or run inside NVIDIA's Triton container, or set GPTOSS_TRITONSERVER=/path/to/tritonserver")
    return root / "bin" / "tritonserver", root


def make_backend_dir(root: Path, dest: Path) -> Path:
    """A backend folder for the bundled server: dest/python/{libtriton_python.so, utils, stub} as links."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"the bundled Triton has no Python-backend stub for Python {ver} ({stub})")
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for src in (root / "backends" / "python" / "libtriton_python.so",
                root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        link = py / src.name
        if not link.exists():
            link.symlink_to(src)
    return dest


def server_env(base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir] + [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep)
                                                          if p and p != libdir])
    # glibc's heap in tritonserver (gRPC and response buffers on many threads) and the stubs: a fixed mmap threshold
    # (the dynamic one climbs to 32 MiB after the first large free, after which such buffers stay in the heap) makes
    # every buffer of 1 MiB or more its own mapping, returned when freed, and few arenas bound what idle threads
    # keep. benchmarks/bench_memory_load.py measures it; a caller's own GLIBC_TUNABLES wins.
    env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
    # The stub may start with an ASCII locale; the models read UTF-8 files and text.
    env.setdefault("PYTHONUTF8", "1")
    # The served models write no __pycache__ into the repository: the engine's triton/ is verified file by file
    # against engine.json (model_repo.integrity), and a .pyc there would be code Python prefers to model.py.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    # The models import this project's packages; make the source tree importable even without `pip install -e`.
    repo_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([repo_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def shm_files(prefix: str) -> list[str]:
    return sorted(glob.glob(os.path.join(SHM_DIR, prefix + "*")))


class TritonServer:
    """A tritonserver child process. start() waits until /v2/health/ready answers 200; stop() sends SIGTERM,
    waits, kills if needed, and removes this server's shared-memory files."""

    def __init__(self, model_repository: str | Path, *, host: str = "127.0.0.1", grpc_port: int = 0,
                 http_port: int = 0, metrics_port: int = 0, log_verbose: int = 0, exit_timeout_s: int = 30,
                 extra_args: list[str] | None = None, log_file: str | Path | None = None,
                 env: dict | None = None):
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise ServerError(f"{self.model_repository}: model repository folder not found")
        self.host = host
        self.grpc_port = grpc_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.log_verbose = log_verbose
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = list(extra_args or [])
        self.log_file = log_file
        self.env = env
        # Unique per server: Python-backend shm files are named "<prefix>_<n>"-style by the backend.
        self.shm_prefix = f"{SHM_PREFIX}_gptoss_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen | None = None
        self.killed = False            # stop() had to SIGKILL it
        self.drain_file: Path | None = None
        self.crash_file: Path | None = None      # deploy/watchdog.py writes it when a model's stub dies
        self.served_repository: Path | None = None   # a plain-ASCII link to model_repository, where needed
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._log_handle = None
        self.binary, self.bundled_root = find_tritonserver()

    # -- addresses -------------------------------------------------------------------------------------------
    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    def command(self, backend_dir: Path | None) -> list[str]:
        cmd = [str(self.binary), f"--model-repository={self.served_repository or self.model_repository}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
               "--allow-gpu-metrics=false", f"--exit-timeout-secs={self.exit_timeout_s}",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
               f"--log-verbose={self.log_verbose}"]
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        return cmd + self.extra_args

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 180.0) -> "TritonServer":
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def check_ports(self) -> None:
        """Refuse to start while another process answers on one of our ports: the readiness check would
        otherwise talk to it (a server left by a killed serve-engine, say) and report ready."""
        for what, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                           ("--metrics-port", self.metrics_port)):
            if port_answering(self._client_host.strip("[]"), port):
                owner = port_owner(port)
                raise ServerError(f"port {port} ({what}) on {self.host} is already answering"
                                  + (f": process {owner}" if owner else " (its process is not visible to this user)")
                                  + f"; fix: stop that process or choose another {what}")

    def launch(self) -> None:
        """Start the process (not waiting for readiness). Call it from a thread that outlives the server: on
        Linux the server is tied to it (parent-death signal) and is stopped if this process is killed."""
        if self.proc is not None:
            raise ServerError("already started")
        self.check_ports()
        backend_dir = None
        if self.bundled_root is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gptoss-triton-")
            backend_dir = make_backend_dir(self.bundled_root, Path(self._tmp.name) / "backends")
        stdout = None
        if self.log_file is not None:
            self._log_handle = open(self.log_file, "ab")
            stdout = self._log_handle
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gptoss-triton-")
        self.served_repository = self._plain_repository_path()
        # The stubs put the working directory on sys.path: run in our own empty folder, so a `tensorrt_llm`
        # folder wherever the user stands (a model repository, say) can never shadow the real package.
        # Its own process group (stop() can kill it with its stubs), and tied to this process: a parent-death
        # signal is per thread, so only a launch from the main thread (which lives as long as we do) sets it.
        tie = _die_with_parent(os.getpid()) if threading.current_thread() is threading.main_thread() else None
        env = server_env(self.env)
        self.drain_file = Path(self._tmp.name) / "draining"
        env[DRAIN_FILE_ENV] = str(self.drain_file)
        self.crash_file = Path(self._tmp.name) / "crashed"
        env[CRASH_FILE_ENV] = str(self.crash_file)
        self.proc = subprocess.Popen(self.command(backend_dir), env=env, stdout=stdout,
                                     stderr=subprocess.STDOUT if stdout is not None else None,
                                     start_new_session=True, cwd=self._tmp.name, preexec_fn=tie)

    def _first_model_error(self) -> str:
        """The first model-load failure in the server's log, if there is a log."""
        if self.log_file is None:
            return ""
        try:
            text = Path(self.log_file).read_text(errors="replace")[-200_000:]
        except OSError:
            return ""
        import re
        m = re.search(r"failed to load '([^']+)' version \d+: ([^\n]{0,400})", text)
        return f": model {m.group(1)}: {m.group(2)}" if m else ""

    def _plain_repository_path(self) -> Path | None:
        """The Python backend starts its stubs with the model's path on an unquoted command line, so a path
        with spaces (or outside ASCII) kills every stub and the server never becomes ready. Serve such a
        repository through a link of a plain name in our temp folder (the models resolve it to the real one)."""
        def plain(path) -> bool:
            return str(path).isascii() and not any(c.isspace() for c in str(path))
        if plain(self.model_repository):
            return None
        # Link the folder above the repository (the engine, for ENGINE_DIR/triton), so that the models reach
        # the engine through the link too, by a path their process can encode.
        link = Path(self._tmp.name) / "served"
        served = link / self.model_repository.name
        if not plain(served):
            link, served = Path(self._tmp.name) / "repository", Path(self._tmp.name) / "repository"
            if not plain(served):
                raise ServerError(f"the model repository {self.model_repository} has spaces or non-ASCII characters "
                                  f"in its path, which the Python backend cannot start models from, and the "
                                  f"temporary folder {self._tmp.name} does too; fix: set TMPDIR to a plain path")
            link.symlink_to(self.model_repository, target_is_directory=True)
            return served
        link.symlink_to(self.model_repository.parent, target_is_directory=True)
        return served

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerError(f"tritonserver exited with status {rc} before becoming ready"
                                  + self._first_model_error() + (f"; see {self.log_file}" if self.log_file else ""))
            if self.is_ready() and self.proc.poll() is None:
                return
            time.sleep(0.1)
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s")

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, wait (the server's exit timeout + 15 s), SIGKILL if needed; remove this server's shm files.
        Returns the exit status."""
        if timeout_s is None:
            timeout_s = self.exit_timeout_s + 15
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                # First the models end what is in flight (with an error to each client), so that Triton's exit
                # finds nothing in flight; its exit timeout would otherwise end in a forced, hanging exit.
                if self.drain_file is not None:
                    try:
                        self.drain_file.touch()
                        time.sleep(0.3)
                    except OSError:
                        pass
                try:
                    self.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.killed = True
                    # The whole process group: the server and its Python-backend stubs.
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.proc.wait(10)
            else:
                self._kill_stubs()
            rc = self.proc.returncode
        self._kill_stubs()
        self.cleanup_shm()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return rc

    def _kill_stubs(self) -> None:
        """Stubs left behind by a server that died: they share its process group (start_new_session)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def cleanup_shm(self) -> list[str]:
        removed = []
        for f in shm_files(self.shm_prefix):
            try:
                os.unlink(f)
                removed.append(f)
            except FileNotFoundError:
                pass
        return removed

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (a model's stub died: a graceful stop would wait on it);
        stop() then cleans up."""
        self._kill_stubs()
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
