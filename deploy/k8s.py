"""Kubernetes objects for one engine: a Deployment when one pod holds all of a replica's GPUs, else a
LeaderWorkerSet (kubernetes-sigs/lws) whose leader starts the TensorRT-LLM ranks across the group with mpirun;
a Service, the engine's PersistentVolumeClaim, a PodMonitor and optionally a HorizontalPodAutoscaler.

Pods run as a non-root user with a read-only root filesystem: /tmp and /cache are emptyDirs, /dev/shm a
memory-backed emptyDir sized for the Python backend and NCCL. GPU counts, memory and the node's GPU product come
from the engine's plan (deploy/sizing.py) and the GPU product table (deploy/data/gpu_products.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from deploy import launch
from deploy.engine_info import DeployError, EngineInfo
from deploy.sizing import Placement, deploy_data, engine_volume_bytes, pod_resources, quantity

APP = "gptoss-trt"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class K8sOptions:
    name: str
    image: str
    namespace: str = "default"
    replicas: int = 1
    engine_pvc: str | None = None       # an existing claim holding the engine; None: write one named NAME-engine
    gpu_product: str | None = None      # the nvidia.com/gpu.product value; None: look it up by the engine's GPU
    autoscale_max: int | None = None    # write a HorizontalPodAutoscaler up to this many replicas


def gpu_product_label(gpu_name: str) -> str:
    table = deploy_data("gpu_products.yaml")["products"]
    if gpu_name not in table:
        raise DeployError(f"no nvidia.com/gpu.product value known for gpu {gpu_name!r}; pass --gpu-product "
                          f"(see `kubectl get nodes -L nvidia.com/gpu.product`) or add it to "
                          f"deploy/data/gpu_products.yaml")
    return table[gpu_name]["label"]


def objects(info: EngineInfo, place: Placement, opt: K8sOptions) -> list[tuple[str, dict]]:
    """(file name, object) pairs, in the order `kubectl apply -f` should create them."""
    if opt.replicas < 1:
        raise DeployError(f"--replicas {opt.replicas}: must be at least 1")
    if opt.autoscale_max is not None and opt.autoscale_max < opt.replicas:
        raise DeployError(f"--autoscale-max {opt.autoscale_max}: must be at least --replicas {opt.replicas}")
    out: list[tuple[str, dict]] = []
    claim = opt.engine_pvc or f"{opt.name}-engine"
    if opt.engine_pvc is None:
        out.append(("pvc-engine.yaml", _pvc(info, opt, claim)))
    if place.multinode:
        out += [("serviceaccount.yaml", _service_account(opt)), ("role.yaml", _role(opt)),
                ("rolebinding.yaml", _role_binding(opt)), ("configmap-launch.yaml", _launch_config_map(opt))]
        workload = ("leaderworkerset.yaml", _leader_worker_set(info, place, opt, claim))
    else:
        workload = ("deployment.yaml", _deployment(info, place, opt, claim))
    out.append(workload)
    out.append(("service.yaml", _service(place, opt)))
    out.append(("podmonitor.yaml", _pod_monitor(opt)))
    if opt.autoscale_max is not None:
        out.append(("hpa.yaml", _hpa(place, opt)))
    return out


# -- pieces ------------------------------------------------------------------------------------------------
def _meta(opt: K8sOptions, name: str | None = None, component: str = "server") -> dict:
    return {"name": name or opt.name, "namespace": opt.namespace, "labels": _labels(opt, component)}


def _labels(opt: K8sOptions, component: str = "server") -> dict:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": opt.name,
            "app.kubernetes.io/component": component}


def _selector_labels(opt: K8sOptions) -> dict:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": opt.name}


def _ports() -> list[dict]:
    return [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in deploy_data()["ports"].items()]


def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def _mounts(launcher: bool = False) -> list[dict]:
    p = deploy_data()["paths"]
    m = [{"name": "engine", "mountPath": p["engine"], "readOnly": True},
         {"name": "tmp", "mountPath": p["tmp"]},
         {"name": "cache", "mountPath": p["cache"]},
         {"name": "dshm", "mountPath": "/dev/shm"}]
    if launcher:
        m.append({"name": "launch", "mountPath": p["launch"], "readOnly": True})
    return m


def _volumes(claim: str, shm_bytes: int, opt: K8sOptions, launcher: bool = False) -> list[dict]:
    v = [{"name": "engine", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
         {"name": "tmp", "emptyDir": {}},
         {"name": "cache", "emptyDir": {}},
         {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity(shm_bytes)}}]
    if launcher:
        v.append({"name": "launch", "configMap": {"name": f"{opt.name}-launch", "defaultMode": 0o555}})
    return v


def _probes() -> dict:
    pr = deploy_data()["probes"]
    period = pr["period_seconds"]

    def get(path: str, **extra) -> dict:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 5, **extra}
    return {"startupProbe": get("/v2/health/live", failureThreshold=max(1, pr["startup_budget_seconds"] // period)),
            "readinessProbe": get("/v2/health/ready", failureThreshold=3),
            "livenessProbe": get("/v2/health/live", failureThreshold=3)}


def _plan_annotations(info: EngineInfo, place: Placement) -> dict:
    """The plan's numbers the requests came from, on every pod, so `kubectl describe` shows them."""
    return {f"{APP}/engine": f"{info.model}/{info.gpu.name}/{info.quant}",
            f"{APP}/parallelism": f"tp={info.tp} pp={info.pp} ep={info.ep} world={place.world_size} "
                                  f"pods={place.pods}",
            f"{APP}/plan-weight-bytes-per-gpu": str(int(info.weight_bytes_per_gpu)),
            f"{APP}/plan-kv-budget-bytes-per-gpu": str(int(info.kv_budget_bytes_per_gpu)),
            f"{APP}/plan-runtime-reserve-bytes": str(int(info.runtime_reserve_bytes))}


def _pod_spec(info: EngineInfo, place: Placement, opt: K8sOptions, claim: str, container: dict,
              launcher: bool = False, service_account: str | None = None) -> dict:
    d = deploy_data()
    uid = d["user"]["uid"]
    res = pod_resources(info, place, serves=container["name"] != "worker")
    container["resources"] = {"requests": res.requests(), "limits": res.limits()}
    spec = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "automountServiceAccountToken": service_account is not None,
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
        "volumes": _volumes(claim, res.shm_bytes, opt, launcher),
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    if not info.on_cpu:
        spec["nodeSelector"] = {GPU_PRODUCT_LABEL: opt.gpu_product or gpu_product_label(info.gpu.name)}
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def _serving_container(image: str, command: list[str] | None = None, env: list[dict] | None = None,
                       launcher: bool = False) -> dict:
    c = {"name": "triton", "image": image, "command": command or launch.serve_args(), "ports": _ports(),
         "securityContext": _container_security(), "volumeMounts": _mounts(launcher), **_probes()}
    if env:
        c["env"] = env
    return c


def _template(info: EngineInfo, place: Placement, opt: K8sOptions, labels: dict, spec: dict) -> dict:
    return {"metadata": {"labels": labels, "annotations": _plan_annotations(info, place)}, "spec": spec}


def _deployment(info: EngineInfo, place: Placement, opt: K8sOptions, claim: str) -> dict:
    container = _serving_container(opt.image)
    spec = _pod_spec(info, place, opt, claim, container)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(opt),
            "spec": {"replicas": opt.replicas, "selector": {"matchLabels": _selector_labels(opt)},
                     # A replacement pod needs the same GPUs: never surge past what the nodes hold.
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
                     "template": _template(info, place, opt, _labels(opt), spec)}}


def _leader_worker_set(info: EngineInfo, place: Placement, opt: K8sOptions, claim: str) -> dict:
    p = deploy_data()["paths"]
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "GROUP_SIZE", "value": str(place.pods)},
           {"name": "GPUS_PER_POD", "value": str(place.gpus_per_pod)},
           {"name": "WORLD_SIZE", "value": str(place.world_size)},
           {"name": "MPIRUN", "value": deploy_data()["images"]["mpirun"]}]
    leader_cmd = ["/bin/sh", f"{p['launch']}/{launch.LEADER}"] + launch.serve_args()
    leader = _serving_container(opt.image, command=leader_cmd, env=env, launcher=True)
    worker = {"name": "worker", "image": opt.image, "command": ["/bin/sh", f"{p['launch']}/{launch.WORKER}"],
              "securityContext": _container_security(), "volumeMounts": _mounts(launcher=True)}
    leader_spec = _pod_spec(info, place, opt, claim, leader, launcher=True,
                            service_account=f"{opt.name}-launcher")
    worker_spec = _pod_spec(info, place, opt, claim, worker, launcher=True)
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": _meta(opt),
            "spec": {"replicas": opt.replicas, "startupPolicy": "LeaderCreated",
                     "leaderWorkerTemplate": {
                         "size": place.pods,
                         # One rank lost breaks the MPI world: restart the whole group together.
                         "restartPolicy": "RecreateGroupOnPodRestart",
                         "leaderTemplate": _template(info, place, opt, {**_labels(opt), "role": "leader"},
                                                     leader_spec),
                         "workerTemplate": _template(info, place, opt, {**_labels(opt, "worker"), "role": "worker"},
                                                     worker_spec)}}}


def _service(place: Placement, opt: K8sOptions) -> dict:
    selector = dict(_selector_labels(opt))
    if place.multinode:
        selector.update({LWS_NAME_LABEL: opt.name, LWS_WORKER_INDEX_LABEL: "0"})
    ports = [{"name": n, "port": p, "targetPort": n, "protocol": "TCP",
              **({"appProtocol": "kubernetes.io/h2c"} if n == "grpc" else {})}
             for n, p in deploy_data()["ports"].items()]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(opt),
            "spec": {"type": "ClusterIP", "selector": selector, "ports": ports}}


def _pvc(info: EngineInfo, opt: K8sOptions, claim: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(opt, claim, "engine"),
            "spec": {"accessModes": ["ReadOnlyMany"], "volumeMode": "Filesystem",
                     "resources": {"requests": {"storage": quantity(engine_volume_bytes(info))}}}}


def _pod_monitor(opt: K8sOptions) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": _meta(opt),
            "spec": {"selector": {"matchLabels": {**_selector_labels(opt), "app.kubernetes.io/component": "server"}},
                     "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]}}


def _hpa(place: Placement, opt: K8sOptions) -> dict:
    a = deploy_data()["autoscaling"]
    target = ({"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": opt.name}
              if place.multinode else {"apiVersion": "apps/v1", "kind": "Deployment", "name": opt.name})
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(opt),
            "spec": {"scaleTargetRef": target, "minReplicas": opt.replicas, "maxReplicas": opt.autoscale_max,
                     "metrics": [{"type": "Pods", "pods": {
                         "metric": {"name": a["metric"]},
                         "target": {"type": "AverageValue", "averageValue": a["target_average_value"]}}}],
                     # Loading an engine takes minutes: scale down slowly so capacity is not thrown away.
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}}}


def _service_account(opt: K8sOptions) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(opt, f"{opt.name}-launcher"),
            "automountServiceAccountToken": False}


def _role(opt: K8sOptions) -> dict:
    # What the leader's kubectl needs to find its workers and start ranks in them, nothing more.
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(opt, f"{opt.name}-launcher"),
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                      {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]}


def _role_binding(opt: K8sOptions) -> dict:
    name = f"{opt.name}-launcher"
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(opt, name),
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": opt.namespace}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}}


def _launch_config_map(opt: K8sOptions) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(opt, f"{opt.name}-launch"),
            "data": launch.scripts()}
