"""Dockerfiles for serving an engine: a GPU image on NVIDIA's Triton TensorRT-LLM container and a CPU image on
slim Python with the pytriton server. Neither holds the engine (it is mounted at run time) or any secret; both
run as a non-root user and install pinned versions of this project's dependencies."""

from __future__ import annotations

import importlib.metadata as md
import re

from deploy import launch
from deploy.sizing import deploy_data

PROJECT = "gptoss-trt"
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(\[[^\]]*\])?")


def project_version() -> str:
    return md.version(PROJECT)


def wheel_name() -> str:
    return f"{PROJECT.replace('-', '_')}-{project_version()}-py3-none-any.whl"


def pinned_requirements(skip: tuple[str, ...] = ()) -> list[str]:
    """The project's runtime dependencies pinned to the versions installed here (the ones its tests ran on)."""
    out = []
    skipped = {s.lower() for s in skip}
    for spec in md.requires(PROJECT) or []:
        m = _REQ.match(spec)
        if m is None or ";" in spec or m.group(1).lower() in skipped:   # extras ("test", "gpu") are not runtime
            continue
        out.append(f"{m.group(1)}{(m.group(2) or '').replace(' ', '')}=={md.version(m.group(1))}")
    return sorted(out, key=str.lower)


def _user_block(d: dict) -> str:
    u = d["user"]
    p = d["paths"]
    return (f"RUN useradd --no-log-init --create-home --uid {u['uid']} --user-group {u['name']} \\\n"
            f" && mkdir -p {p['cache']} {p['engine']} \\\n"
            f" && chown {u['uid']}:{u['uid']} {p['cache']}\n")


def _env_block(d: dict) -> str:
    p = d["paths"]
    return (f"ENV HOME={p['cache']} \\\n    XDG_CACHE_HOME={p['cache']} \\\n"
            f"    TRITON_CACHE_DIR={p['cache']}/triton \\\n    HF_HOME={p['cache']}/huggingface \\\n"
            f"    PYTHONDONTWRITEBYTECODE=1 \\\n    PYTHONUNBUFFERED=1\n")


def _serve_cmd(d: dict) -> str:
    return "CMD [" + ", ".join(f'"{a}"' for a in launch.serve_args()) + "]\n"


def _expose(d: dict) -> str:
    return "EXPOSE " + " ".join(str(v) for v in d["ports"].values()) + "\n"


def gpu_dockerfile() -> str:
    d = deploy_data()
    img = d["images"]["gpu_base"]
    kubectl = d["images"]["kubectl_version"]
    return (
        f"# Serving image for GPU engines: NVIDIA's Triton container with TensorRT-LLM {img['tensorrt_llm']}, plus\n"
        f"# this project (its Triton Python models and serve-engine). Build context: this folder, holding\n"
        f"# dist/{wheel_name()} and requirements-gpu.txt.\n"
        f"FROM {img['image']}:{img['tag']}\n\n"
        ''
        "# kubectl: the remote-shell agent mpirun uses to start ranks in the worker pods of a multi-node engine.\n"
        f"ARG KUBECTL_VERSION={kubectl}\n"
        "ARG TARGETARCH=amd64\n"
        "# Python rather than curl: the container's Python is certain to be there.\n"
        "RUN python3 -c \"import hashlib, os, urllib.request as u; \\\n"
        "env = os.environ; \\\n"
        "url = 'https://dl.k8s.io/release/%s/bin/linux/%s/kubectl' % (env['KUBECTL_VERSION'], env['TARGETARCH']); \\\n"
        "data = u.urlopen(url).read(); want = u.urlopen(url + '.sha256').read().decode().split()[0]; \\\n"
        "assert hashlib.sha256(data).hexdigest() == want, 'kubectl checksum mismatch'; \\\n"
        "open('/usr/local/bin/kubectl', 'wb').write(data)\" \\\n"
" && chmod 0755 /usr/local/bin/kubectl\n\n"
        "# The project without its CPU-only dependencies (torch, numpy, pytriton): the container's own are used.\n"
        "COPY requirements-gpu.txt /tmp/requirements-gpu.txt\n"
        f"COPY dist/{wheel_name()} /tmp/\n"
        "# PIP_BREAK_SYSTEM_PACKAGES: the container's Python is the system one (PEP 668); older pips ignore it.\n"
        "RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir \\\n"
        "      --requirement /tmp/requirements-gpu.txt \\\n"
        f" && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --no-deps /tmp/{wheel_name()} \\\n"
        f" && rm /tmp/requirements-gpu.txt /tmp/{wheel_name()}\n\n"
        + _user_block(d) + "\n" + _env_block(d) + "\n"
        + f"USER {d['user']['uid']}:{d['user']['uid']}\n"
        + f"WORKDIR {d['paths']['cache']}\n"
        + _expose(d) + _serve_cmd(d))


def cpu_dockerfile() -> str:
    d = deploy_data()
    img = d["images"]["cpu_base"]
    return (
        "# Serving image for CPU engines: slim Python, this project from its wheel, and the Triton server that\n"
        "# nvidia-pytriton bundles (runs on CPU). Build context: this folder, holding dist/ and requirements-cpu.txt.\n"
        f"FROM {img['image']}:{img['tag']}\n\n"
        "COPY requirements-cpu.txt /tmp/requirements-cpu.txt\n"
        f"COPY dist/{wheel_name()} /tmp/\n"
        "# torch from its CPU index: the default index's build carries gigabytes of CUDA libraries.\n"
        f"RUN python -m pip install --no-cache-dir --extra-index-url {d['images']['torch_cpu_index']} \\\n"
        "      --requirement /tmp/requirements-cpu.txt \\\n"
        f" && python -m pip install --no-cache-dir --no-deps /tmp/{wheel_name()} \\\n"
        f" && rm /tmp/requirements-cpu.txt /tmp/{wheel_name()}\n\n"
        + _user_block(d) + "\n" + _env_block(d) + "\n"
        + f"USER {d['user']['uid']}:{d['user']['uid']}\n"
        + f"WORKDIR {d['paths']['cache']}\n"
        + _expose(d) + _serve_cmd(d))


def files(on_cpu: bool) -> dict[str, str]:
    """Relative path -> text for the docker/ folder: the engine's image, its pinned requirements, .dockerignore."""
    d = deploy_data()
    if on_cpu:
        out = {"Dockerfile.cpu": cpu_dockerfile(),
               "requirements-cpu.txt": "\n".join(pinned_requirements()) + "\n"}
    else:
        out = {"Dockerfile.gpu": gpu_dockerfile(),
               "requirements-gpu.txt": "\n".join(pinned_requirements(tuple(d["gpu_image_skips_dependencies"])))
               + "\n"}
    out[".dockerignore"] = "*\n!dist/*.whl\n!requirements-*.txt\n"
    return out


def dockerfile_name(on_cpu: bool) -> str:
    return "Dockerfile.cpu" if on_cpu else "Dockerfile.gpu"
