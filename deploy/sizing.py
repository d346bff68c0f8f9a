"""From an engine's plan to pods: how many GPUs each pod gets, how many pods one replica spans, and the host
memory, shared memory and CPU each pod asks for. Pure functions over EngineInfo and deploy/data/deploy.yaml."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from deploy.engine_info import DeployError, EngineInfo

MIB = 1024 * 1024


@lru_cache(maxsize=None)
def deploy_data(name: str = "deploy.yaml") -> dict:
    return yaml.safe_load(resources.files("deploy").joinpath("data", name).read_text())


@dataclass(frozen=True)
class Placement:
    world_size: int      # MPI ranks = GPUs one replica uses (tp x pp); 1 for a CPU engine
    gpus_per_pod: int    # 0 for a CPU engine
    pods: int            # pods one replica spans (1: a Deployment; more: a LeaderWorkerSet group)

    @property
    def multinode(self) -> bool:
        return self.pods > 1


def placement(info: EngineInfo, gpus_per_node: int) -> Placement:
    if gpus_per_node < 1:
        raise DeployError(f"--gpus-per-node {gpus_per_node}: must be at least 1 (the GPUs one node offers)")
    if info.on_cpu:
        return Placement(world_size=1, gpus_per_pod=0, pods=1)
    world = info.world_size
    if world <= gpus_per_node:
        return Placement(world, world, 1)
    # Every pod of a LeaderWorkerSet group comes from one template, so all get the same GPU count: the largest
    # divisor of the world size that fits on a node (tp=4 on 3-GPU nodes -> 2 pods of 2).
    per_pod = max(d for d in range(1, gpus_per_node + 1) if world % d == 0)
    return Placement(world, per_pod, world // per_pod)


@dataclass(frozen=True)
class PodResources:
    gpus: int
    memory_request_bytes: int
    memory_limit_bytes: int
    shm_bytes: int
    cpu: int

    def requests(self) -> dict:
        r = {"cpu": str(self.cpu), "memory": quantity(self.memory_request_bytes)}
        if self.gpus:
            r["nvidia.com/gpu"] = str(self.gpus)
        return r

    def limits(self) -> dict:
        r = {"memory": quantity(self.memory_limit_bytes)}
        if self.gpus:
            r["nvidia.com/gpu"] = str(self.gpus)
        return r


def pod_resources(info: EngineInfo, place: Placement, serves: bool = True) -> PodResources:
    """`serves`: the pod runs tritonserver (the leader, or the only pod); workers run TensorRT-LLM ranks only.

    GPU engine: host memory = each rank's weight shard read through the page cache while loading, plus a
    per-rank host baseline, plus the server's baseline, plus /dev/shm (a memory-backed emptyDir is charged to
    the pod). CPU engine: the reference runtime keeps the weights and the KV cache of max_batch_size sequences
    in host memory, plus the plan's runtime reserve.
    """
    d = deploy_data()
    hm, shm_cfg, cores = d["host_memory"], d["shm"], d["cpu_cores"]
    gpus = place.gpus_per_pod
    shm = shm_cfg["base_bytes"] + shm_cfg["per_gpu_bytes"] * gpus
    server = hm["server_baseline_bytes"] if serves else 0
    if info.on_cpu:
        need = info.weight_bytes_per_gpu + info.kv_bytes_per_sequence * info.max_batch_size \
            + info.runtime_reserve_bytes
        cpu = cores["cpu_engine"]
    else:
        need = gpus * (info.weight_bytes_per_gpu * hm["load_staging_fraction"] + hm["per_gpu_rank_bytes"])
        cpu = cores["per_gpu"] * gpus
    if serves:
        cpu += cores["per_pod"]
    request = _round_mib(need + server + shm)
    limit = _round_mib(request * (1 + hm["headroom_fraction"]))
    return PodResources(gpus=gpus, memory_request_bytes=request, memory_limit_bytes=limit, shm_bytes=shm, cpu=cpu)


def engine_volume_bytes(info: EngineInfo) -> int:
    """The PersistentVolumeClaim size: the engine directory plus 10%, whole GiB."""
    gib = 1024 ** 3
    return max(1, math.ceil(info.size_bytes * 1.1 / gib)) * gib


def quantity(n_bytes: int) -> str:
    """Bytes as a Kubernetes quantity in whole Gi when exact, else Mi."""
    if n_bytes % (1024 * MIB) == 0:
        return f"{n_bytes // (1024 * MIB)}Gi"
    return f"{math.ceil(n_bytes / MIB)}Mi"


def _round_mib(n: float) -> int:
    return int(math.ceil(n / MIB)) * MIB
