"""compose.yaml (Compose specification) for one engine on one host: a service running serve-engine, which
starts tritonserver and the OpenAI endpoint in front of it. The engine is bind-mounted read-only, the root
filesystem is read-only with tmpfs for the paths the server writes, ports are published on 127.0.0.1 unless
told otherwise, and a GPU engine reserves exactly the GPUs its plan uses."""

from __future__ import annotations

from deploy import docker
from deploy.engine_info import DeployError, EngineInfo
from deploy.sizing import MIB, Placement, deploy_data, pod_resources

HEALTH_CMD = ("import sys, urllib.request; "
              "sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{port}/v2/health/ready', timeout=3).status "
              "== 200 else 1)")


def compose(info: EngineInfo, place: Placement, name: str, image: str, bind: str = "127.0.0.1") -> dict:
    if place.multinode:
        raise DeployError(f"--target compose runs on one host, but this engine needs {place.world_size} GPUs and "
                          f"--gpus-per-node allows {place.gpus_per_pod} per host; use --target k8s "
                          f"(a LeaderWorkerSet) or a host with {place.world_size} GPUs (--gpus-per-node "
                          f"{place.world_size})")
    d = deploy_data()
    ports, paths, uid = d["ports"], d["paths"], d["user"]["uid"]
    res = pod_resources(info, place)
    service = {
        "image": image,
        "build": {"context": "./docker", "dockerfile": docker.dockerfile_name(info.on_cpu)},
        "user": f"{uid}:{uid}",
        "read_only": True,
        "tmpfs": [paths["tmp"], f"{paths['cache']}:uid={uid},gid={uid}"],
        "shm_size": _mib(res.shm_bytes),
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "ulimits": {"memlock": -1, "stack": 67108864},
        "volumes": [{"type": "bind", "source": str(info.engine_dir), "target": paths["engine"],
                     "read_only": True}],
        "ports": [{"name": n, "target": p, "published": str(p), "host_ip": bind, "protocol": "tcp"}
                  for n, p in ports.items()],
        "healthcheck": {"test": ["CMD", "python3", "-c", HEALTH_CMD.format(port=ports["http"])],
                        "interval": "10s", "timeout": "5s", "retries": 3,
                        "start_period": f"{d['probes']['startup_budget_seconds']}s", "start_interval": "5s"},
        "restart": "unless-stopped",
        "stop_grace_period": "30s",
        "deploy": {"resources": {"limits": {"memory": _mib(res.memory_limit_bytes)},
                                 "reservations": {"memory": _mib(res.memory_request_bytes)}}},
    }
    if res.gpus:
        service["deploy"]["resources"]["reservations"]["devices"] = [
            {"driver": "nvidia", "count": res.gpus, "capabilities": ["gpu"]}]
    return {"name": name, "services": {"triton": service}}


def _mib(n_bytes: int) -> str:
    """Compose's byte-value syntax, in whole MiB."""
    return f"{-(-n_bytes // MIB)}m"
