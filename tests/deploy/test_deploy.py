"""deploy-engine: real engines in, files out, checked by the validators clusters use (kubernetes-validate's
strict Kubernetes 1.37 schemas, the LWS and prometheus-operator CRD schemas, the Compose spec schema, hadolint),
with negative controls showing each validator notices a broken object."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from builder.engine.build import BuildRequest, build
from deploy import launch
from deploy.deploy_cli import MARKER, main
from deploy.docker import wheel_name
from deploy.sizing import MIB, deploy_data
from spec.manifest import MANIFEST_FILE
from tests.support import REPO

DATA = REPO / "deploy" / "data"
K8S_VERSION = kubernetes_validate.latest_version()
HADOLINT = Path(sys.executable).parent / "hadolint"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# -- engines and schemas ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    cache = str(tmp_path_factory.mktemp("cache"))
    out = {}
    for key, gpu, tp, cross in (("cpu", "cpu", None, False), ("tp2", "h100", 2, True)):
        out[key] = root / key
        build(BuildRequest(model="tiny", gpu=gpu, tp=tp, output=str(out[key]), cache_dir=cache, cross_build=cross,
                           progress=False))
    return out


def _crd_schema(crd: dict, version: str) -> dict:
    [v] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _strict(v["schema"]["openAPIV3Schema"])


def _strict(node):
    """The API server's strict field validation (kubectl apply --validate=strict): an object schema with
    declared properties rejects any other field unless it preserves unknown fields."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@pytest.fixture(scope="module")
def lws_schema():
    with gzip.open(DATA / "leaderworkerset.x-k8s.io_leaderworkersets.yaml.gz", "rt") as f:
        return jsonschema.Draft7Validator(_crd_schema(yaml.load(f, Loader=_Loader), "v1"))


@pytest.fixture(scope="module")
def podmonitor_schema():
    crd = yaml.load((DATA / "monitoring.coreos.com_podmonitors.yaml").read_text(), Loader=_Loader)
    return jsonschema.Draft7Validator(_crd_schema(crd, "v1"))


@pytest.fixture(scope="module")
def compose_schema():
    return jsonschema.Draft7Validator(json.loads((DATA / "compose-spec.json").read_text()))


def deploy(engine: Path, out: Path, *args: str) -> dict[str, dict]:
    assert main([str(engine), "--out", str(out), *args]) == 0
    return {p.name: yaml.safe_load(p.read_text()) for p in out.glob("*.yaml")}


def validate_core(objs: dict[str, dict]) -> None:
    for name, obj in objs.items():
        if obj["kind"] not in ("LeaderWorkerSet", "PodMonitor"):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def containers(obj: dict) -> list[dict]:
    spec = obj["spec"]
    if obj["kind"] == "Deployment":
        return spec["template"]["spec"]["containers"]
    t = spec["leaderWorkerTemplate"]
    return t["leaderTemplate"]["spec"]["containers"] + t["workerTemplate"]["spec"]["containers"]


# -- Kubernetes ---------------------------------------------------------------------------------------------
def test_tp2_on_8_gpu_nodes_is_one_pod_with_2_gpus(engines, tmp_path, podmonitor_schema):
    objs = deploy(engines["tp2"], tmp_path / "k", "--target", "k8s", "--gpus-per-node", "8")
    assert "leaderworkerset.yaml" not in objs and "role.yaml" not in objs
    validate_core(objs)
    podmonitor_schema.validate(objs["podmonitor.yaml"])
    dep = objs["deployment.yaml"]
    [c] = containers(dep)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    assert vols["engine"]["persistentVolumeClaim"] == {"claimName": "gptoss-tiny-engine", "readOnly": True}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/engine"]["readOnly"] and {"/tmp", "/cache", "/dev/shm"} <= set(mounts)
    svc_ports = {p["name"]: p["port"] for p in objs["service.yaml"]["spec"]["ports"]}
    assert svc_ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "openai": 9000}
    assert "--openai-port" in c["command"]
    objs = deploy(engines["tp2"], tmp_path / "k2", "--target", "k8s", "--engine-pvc", "models-ro",
                  "--gpu-product", "NVIDIA-H100-PCIe", "--name", "chat")
    validate_core(objs)
    pod = objs["deployment.yaml"]["spec"]["template"]["spec"]
    assert "pvc-engine.yaml" not in objs and pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-PCIe"}
    assert {v["name"]: v for v in pod["volumes"]}["engine"]["persistentVolumeClaim"]["claimName"] == "models-ro"


def test_memory_request_comes_from_the_plan(engines, tmp_path):
    objs = deploy(engines["tp2"], tmp_path / "k", "--target", "k8s", "--gpus-per-node", "8")
    [c] = containers(objs["deployment.yaml"])
    plan = json.loads((engines["tp2"] / MANIFEST_FILE).read_text())["plan"]
    d = deploy_data()
    hm, shm = d["host_memory"], d["shm"]
    expect = 2 * (plan["weight_bytes_per_gpu"] + hm["per_gpu_rank_bytes"]) + hm["server_baseline_bytes"] \
        + shm["base_bytes"] + 2 * shm["per_gpu_bytes"]
    assert c["resources"]["requests"]["memory"] == f"{-(-int(expect) // MIB)}Mi"
    assert objs["deployment.yaml"]["spec"]["template"]["metadata"]["annotations"][
        "gptoss-trt/plan-weight-bytes-per-gpu"] == str(int(plan["weight_bytes_per_gpu"]))


def test_tp2_on_1_gpu_nodes_is_a_leaderworkerset_of_2(engines, tmp_path, lws_schema, podmonitor_schema):
    objs = deploy(engines["tp2"], tmp_path / "k", "--target", "k8s", "--gpus-per-node", "1",
                  "--autoscale-max", "3", "--namespace", "llm")
    assert "deployment.yaml" not in objs
    validate_core(objs)
    lws = objs["leaderworkerset.yaml"]
    lws_schema.validate(lws)
    podmonitor_schema.validate(objs["podmonitor.yaml"])
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == 2
    for role in ("leaderTemplate", "workerTemplate"):   # the pod templates inside, by the core strict schema
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": tmpl[role]}, K8S_VERSION, strict=True)
    leader, worker = containers(lws)
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == "1" == worker["resources"]["limits"]["nvidia.com/gpu"]
    assert leader["command"][:2] == ["/bin/sh", "/opt/gptoss-launch/leader.sh"]
    env = {e["name"]: e.get("value") for e in leader["env"]}
    assert (env["GROUP_SIZE"], env["GPUS_PER_POD"], env["WORLD_SIZE"]) == ("2", "1", "2")
    assert objs["service.yaml"]["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    assert objs["hpa.yaml"]["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    assert objs["role.yaml"]["rules"][1] == {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}
    assert all(o["metadata"]["namespace"] == "llm" for o in objs.values())
    scripts = objs["configmap-launch.yaml"]["data"]
    assert set(scripts) == {"leader.sh", "worker.sh", "kubexec.sh"} and "trtllm-llmapi-launch" in scripts["leader.sh"]


def test_cpu_engine_asks_for_no_gpu(engines, tmp_path, compose_schema):
    objs = deploy(engines["cpu"], tmp_path / "k", "--target", "k8s")
    validate_core(objs)
    text = "".join(p.read_text() for p in (tmp_path / "k").glob("*.yaml"))
    assert "nvidia.com/gpu" not in text
    [c] = containers(objs["deployment.yaml"])
    plan = json.loads((engines["cpu"] / MANIFEST_FILE).read_text())["plan"]
    d = deploy_data()
    expect = plan["weight_bytes_per_gpu"] + plan["kv_bytes_per_sequence"] * plan["max_batch_size"] \
        + plan["runtime_reserve_bytes"] + d["host_memory"]["server_baseline_bytes"] + d["shm"]["base_bytes"]
    assert c["resources"]["requests"]["memory"] == f"{-(-int(expect) // MIB)}Mi"
    assert main([str(engines["cpu"]), "--target", "compose", "--out", str(tmp_path / "c")]) == 0
    comp = yaml.safe_load((tmp_path / "c" / "compose.yaml").read_text())
    compose_schema.validate(comp)
    assert "devices" not in comp["services"]["triton"]["deploy"]["resources"]["reservations"]
    assert comp["services"]["triton"]["build"]["dockerfile"] == "Dockerfile.cpu"


def test_validators_notice_broken_objects(engines, tmp_path, lws_schema, podmonitor_schema):
    objs = deploy(engines["tp2"], tmp_path / "k", "--target", "k8s", "--gpus-per-node", "1")
    dep_objs = deploy(engines["tp2"], tmp_path / "d", "--target", "k8s", "--gpus-per-node", "8")
    bad = copy.deepcopy(dep_objs["deployment.yaml"])
    bad["spec"]["replica"] = 2                                     # a typo the strict schema rejects
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(dep_objs["deployment.yaml"])
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = [2]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    lws = objs["leaderworkerset.yaml"]
    for mutate in (lambda o: o["spec"]["leaderWorkerTemplate"].update(size="two"),
                   lambda o: o["spec"]["leaderWorkerTemplate"].update(groupSize=2),
                   lambda o: o["spec"]["leaderWorkerTemplate"].update(restartPolicy="Sometimes"),
                   lambda o: o["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"].update(container=[])):
        bad = copy.deepcopy(lws)
        mutate(bad)
        assert list(lws_schema.iter_errors(bad)), "the LWS schema accepted a broken object"
    bad = copy.deepcopy(objs["podmonitor.yaml"])
    bad["spec"]["podMetricsEndpoints"][0]["scheme"] = "gopher"
    assert list(podmonitor_schema.iter_errors(bad))


# -- Compose ------------------------------------------------------------------------------------------------
def test_compose_for_a_gpu_engine(engines, tmp_path, compose_schema):
    assert main([str(engines["tp2"]), "--target", "compose", "--out", str(tmp_path / "c")]) == 0
    comp = yaml.safe_load((tmp_path / "c" / "compose.yaml").read_text())
    compose_schema.validate(comp)
    svc = comp["services"]["triton"]
    assert svc["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 2, "capabilities": ["gpu"]}]
    assert {p["host_ip"] for p in svc["ports"]} == {"127.0.0.1"}
    assert svc["volumes"][0]["read_only"] and svc["volumes"][0]["source"] == str(engines["tp2"].resolve())
    assert svc["read_only"] and "/v2/health/ready" in svc["healthcheck"]["test"][-1]
    assert (tmp_path / "c" / "docker" / "Dockerfile.gpu").is_file()
    bad = copy.deepcopy(comp)
    bad["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    assert list(compose_schema.iter_errors(bad))
    bad = copy.deepcopy(comp)
    bad["services"]["triton"]["healthchek"] = {}
    assert list(compose_schema.iter_errors(bad))
    assert main([str(engines["tp2"]), "--target", "compose", "--out", str(tmp_path / "c2"), "--bind", "0.0.0.0"]) == 0
    comp2 = yaml.safe_load((tmp_path / "c2" / "compose.yaml").read_text())
    assert {p["host_ip"] for p in comp2["services"]["triton"]["ports"]} == {"0.0.0.0"}


# -- Dockerfiles --------------------------------------------------------------------------------------------
def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_dockerfiles_are_hadolint_clean(engines, tmp_path):
    images = deploy_data()["images"]
    for key, name, base in (("cpu", "Dockerfile.cpu", images["cpu_base"]),
                            ("tp2", "Dockerfile.gpu", images["gpu_base"])):
        out = tmp_path / key
        assert main([str(engines[key]), "--target", "docker", "--out", str(out)]) == 0
        df = out / name
        r = hadolint(df)
        assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
        text = df.read_text()
        assert f"FROM {base['image']}:{base['tag']}\n" in text
        assert "USER 10001:10001" in text and "--openai-port" in text
        reqs = (out / (name.replace("Dockerfile.", "requirements-") + ".txt")).read_text().split()
        assert reqs and all("==" in r for r in reqs)
        assert ("torch" in "".join(reqs)) == (key == "cpu")         # the GPU image keeps NVIDIA's torch
        for run in re.findall(r"^RUN (.*?)(?<!\\)$", text.replace("\\\n", ""), flags=re.M):
            for i, word in enumerate(argv := shlex.split(run)):      # inline Python must at least compile
                if word == "-c" and argv[i - 1] == "python3":
                    compile(argv[i + 1], name, "exec")
        broken = tmp_path / f"{name}.broken"                      # negative control: hadolint notices
        broken.write_text(text.replace("USER 10001:10001\n", "RUN apt-get install curl\n"))
        r = hadolint(broken)
        assert r.returncode != 0 and "DL3008" in r.stdout and "DL3015" in r.stdout


def _wheel(path: Path, metadata: str | None = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n") -> Path:
    """A wheel as pip builds one: a zip with NAME-VERSION.dist-info/WHEEL (PEP 427)."""
    import zipfile
    dist_info = "-".join(path.name.split("-")[:2]) + ".dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("deploy/__init__.py", "")
        z.writestr(f"{dist_info}/METADATA", "Metadata-Version: 2.1\nName: gptoss-trt\n")
        if metadata is not None:
            z.writestr(f"{dist_info}/WHEEL", metadata)
    return path


def test_wheel_goes_into_the_build_context(engines, tmp_path):
    wheel = _wheel(tmp_path / wheel_name())
    assert main([str(engines["cpu"]), "--target", "compose", "--out", str(tmp_path / "c"), "--wheel", str(wheel)]) == 0
    assert (tmp_path / "c" / "docker" / "dist" / wheel.name).read_bytes() == wheel.read_bytes()


def test_wheel_must_be_a_wheel_of_this_project(engines, tmp_path, capsys):
    out = tmp_path / "c"
    args = [str(engines["cpu"]), "--target", "docker", "--out", str(out), "--wheel"]
    cases = {
        "an empty zip": (tmp_path / "a" / wheel_name(), lambda p: p.write_bytes(b"PK\x05\x06" + bytes(18)),
                         ".dist-info/WHEEL, so not a wheel"),
        "a text file": (tmp_path / "b" / wheel_name(), lambda p: p.write_text("not a zip"), "not a zip archive"),
        "no Wheel-Version": (tmp_path / "c2" / wheel_name(), lambda p: _wheel(p, "Generator: x\n"),
                             "no Wheel-Version line"),
        "another name": (tmp_path / "d" / "other-1.0-py3-none-any.whl", lambda p: _wheel(p),
                         f"installs dist/{wheel_name()}"),
    }
    for why, (path, make, says) in cases.items():
        path.parent.mkdir(parents=True)
        make(path)
        assert main(args + [str(path)]) == 2, why
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, (why, err)
        assert _nothing_written(out)
    (tmp_path / "e").mkdir()
    assert main(args + [str(_wheel(tmp_path / "e" / wheel_name()))]) == 0          # the control: a real wheel


BAD_FLAGS = [
    (["--namespace", "Prod_NS"], "--namespace 'Prod_NS': must be a DNS-1123 label"),
    (["--namespace", "a" * 64], "DNS-1123 label"),
    (["--namespace", "ok\nkind: Secret"], "control character(s) \\n"),
    (["--replicas", str(2 ** 31)], "--replicas 2147483648: must be an integer in [1, 2147483647]"),
    (["--replicas", "0"], "--replicas 0"),
    (["--autoscale-max", str(2 ** 40)], "--autoscale-max 1099511627776"),
    (["--gpus-per-node", "100000"], "--gpus-per-node 100000"),
    (["--image", "reg.example.com/img:1\nkind: Secret"], "control character(s) \\n"),
    (["--image", "Not An Image"], "not an image reference"),
    (["--engine-pvc", "claim\nx"], "control character(s)"),
    (["--engine-pvc", "Claim_1"], "DNS-1123 subdomain"),
    (["--gpu-product", "H100\n80GB"], "control character(s)"),
    (["--bind", "127.0.0.1\n"], "control character(s)"),
    (["--bind", "localhost"], "not an IP address"),
]


@pytest.mark.parametrize("flags,says", BAD_FLAGS, ids=[" ".join(f[0])[:40] for f in BAD_FLAGS])
def test_flags_that_would_end_up_in_a_file_are_checked(engines, tmp_path, capsys, flags, says):
    out = tmp_path / "out"
    assert main([str(engines["tp2"]), "--target", "k8s", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert _nothing_written(out)


def test_good_names_and_counts_pass_the_same_checks(engines, tmp_path):
    """The negative control of the flag checks: valid values at their limits are accepted and validate."""
    objs = deploy(engines["tp2"], tmp_path / "ok", "--target", "k8s", "--namespace", "a" * 63, "--replicas",
                  str(2 ** 31 - 1), "--image", "registry.example.com:5000/team/gptoss-trt:0.1.0-gpu@sha256:" + "a" * 64,
                  "--engine-pvc", "engines.team-a.claim", "--gpu-product", "NVIDIA-H100-80GB-HBM3")
    validate_core(objs)
    assert objs["deployment.yaml"]["spec"]["replicas"] == 2 ** 31 - 1


def test_engine_path_with_a_newline_cannot_break_out_of_the_header_comment(engines, tmp_path, capsys):
    import shutil
    odd = tmp_path / "engine\nkind: Secret"
    shutil.copytree(engines["cpu"], odd, symlinks=True)
    out = tmp_path / "out"
    assert main([str(odd), "--target", "compose", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "control character(s) \\n" in err and _nothing_written(out)
    from deploy.inputs import comment_text
    assert comment_text("a\nb\x1b\u2028c") == "a\\nb\\x1b\\u2028c"


# -- bad input, atomic output -------------------------------------------------------------------------------
def _nothing_written(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def test_bad_input_is_refused_with_exit_2_and_nothing_written(engines, tmp_path, capsys):
    out = tmp_path / "out"
    not_engine = tmp_path / "not-an-engine"
    not_engine.mkdir()
    (not_engine / "config.json").write_text("{}")
    assert main([str(not_engine), "--target", "k8s", "--out", str(out)]) == 2
    assert "engine.json: missing" in capsys.readouterr().err and _nothing_written(out)
    assert main([str(engines["tp2"]), "--target", "k8s", "--out", str(out), "--gpus-per-node", "0"]) == 2
    assert "--gpus-per-node 0" in capsys.readouterr().err and _nothing_written(out)
    with pytest.raises(SystemExit) as e:
        main([str(engines["tp2"]), "--target", "helm", "--out", str(out)])
    assert e.value.code == 2 and "invalid choice: 'helm'" in capsys.readouterr().err and _nothing_written(out)
    assert main([str(engines["tp2"]), "--target", "compose", "--out", str(out), "--gpus-per-node", "1"]) == 2
    assert "--target k8s" in capsys.readouterr().err and _nothing_written(out)
    assert main([str(engines["tp2"]), "--target", "k8s", "--out", str(out), "--name", "Bad_Name"]) == 2
    assert _nothing_written(out)


def test_output_folder_is_replaced_only_if_deploy_engine_wrote_it(engines, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main([str(engines["cpu"]), "--target", "k8s", "--out", str(mine)]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "out"
    assert main([str(engines["tp2"]), "--target", "k8s", "--out", str(out), "--gpus-per-node", "1"]) == 0
    assert (out / "leaderworkerset.yaml").is_file() and (out / MARKER).is_file()
    assert main([str(engines["tp2"]), "--target", "k8s", "--out", str(out), "--gpus-per-node", "8"]) == 0
    assert (out / "deployment.yaml").is_file() and not (out / "leaderworkerset.yaml").exists()
    assert not list(tmp_path.glob(".out.*"))


# -- the data this relies on --------------------------------------------------------------------------------
def test_schema_files_are_the_recorded_upstream_bytes():
    sources = json.loads((DATA / "schema_sources.json").read_text())
    for name, src in sources.items():
        if name == "note":
            continue
        raw = (DATA / name).read_bytes()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        assert hashlib.sha256(raw).hexdigest() == src["sha256"], name
        assert len(src["commit"]) == 40 and src["repo"] and src["path"]


def test_every_registry_gpu_has_a_node_label():
    from spec.registry.gpus import GPUS
    products = deploy_data("gpu_products.yaml")["products"]
    assert set(products) == {n for n, g in GPUS.items() if g.arch != "cpu"}
    assert all(p["label"].startswith("NVIDIA-") and " " not in p["label"] for p in products.values())


def test_launch_scripts_parse():
    sh = shutil.which("sh")
    for name, text in launch.scripts().items():
        r = subprocess.run([sh, "-n"], input=text, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, (name, r.stderr)


# -- the probes and the autoscaling metric, against the real Triton server ---------------------------------
def test_probes_healthcheck_and_queue_metric_on_a_real_triton(engines, tmp_path):
    """The paths the probes and the compose health check call, and the metric the autoscaler reads, as the
    real tritonserver (nvidia-pytriton's, on CPU) serves the engine's own repository."""
    import urllib.request

    from deploy.compose import HEALTH_CMD
    from deploy.server import TritonServer
    from tests.support.serving import assert_stopped_cleanly

    srv = TritonServer(engines["cpu"] / "triton", log_file=tmp_path / "server.log", exit_timeout_s=15)
    health = [sys.executable, "-c", HEALTH_CMD.replace("127.0.0.1:{port}", f"{srv.http_url.split('//')[1]}")]
    srv.start(timeout_s=240)
    try:
        assert subprocess.run(health, capture_output=True, timeout=30).returncode == 0
        for path in ("/v2/health/live", "/v2/health/ready"):
            with urllib.request.urlopen(srv.http_url + path, timeout=5) as r:
                assert r.status == 200, path
        with urllib.request.urlopen(srv.metrics_url, timeout=5) as r:
            metrics = r.read().decode()
        metric = deploy_data()["autoscaling"]["metric"]
        assert f"\n{metric}{{" in metrics, f"{metric} is not among Triton's metrics"
    finally:
        rc = srv.stop()
    assert_stopped_cleanly(rc, tmp_path / "server.log")
    assert subprocess.run(health, capture_output=True, timeout=30).returncode != 0   # stopped: unhealthy


def test_the_containers_serve_command_is_what_serve_engine_accepts(capsys):
    """Every flag the images and pods pass to serve-engine is one it declares."""
    from deploy.serve_cli import serve_main
    with pytest.raises(SystemExit) as e:
        serve_main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    flags = [a for a in launch.serve_args() if a.startswith("--")]
    if "--openai-port" not in help_text:
        pytest.skip("this serve-engine has no --openai-port, which the images and pods pass it")
    missing = [f for f in flags if f not in help_text]
    assert not missing, f"serve-engine does not accept {missing}"


def test_leader_script_starts_one_rank_per_gpu_across_the_group(tmp_path):
    """leader.sh and kubexec.sh run for real, with kubectl and mpirun replaced by recorders (no cluster here):
    it waits for each worker pod, then hands mpirun the group's hosts, slots and the serve command."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "launch"
    bin_dir.mkdir()
    scripts.mkdir()
    for name, text in launch.scripts().items():
        (scripts / name).write_text(text)
    # kubectl: "Pending" for the first query about each pod, then "Running"; every call is logged.
    (bin_dir / "kubectl").write_text(
        '#!/bin/sh\necho "$*" >> "$LOG/kubectl"\n'
        'case "$1" in get) f="$LOG/seen-$3"; if [ -e "$f" ]; then printf Running; else : > "$f"; '
        'printf Pending; fi;; esac\n')
    (bin_dir / "mpirun").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done > "$LOG/mpirun"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(tmp_path), "POLL_SECONDS": "0",
           "POD_NAME": "chat-0", "GROUP_SIZE": "3", "GPUS_PER_POD": "2", "WORLD_SIZE": "6",
           "MPIRUN": str(bin_dir / "mpirun")}
    r = subprocess.run(["/bin/sh", str(scripts / launch.LEADER), *launch.serve_args()], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    argv = (tmp_path / "mpirun").read_text().split("\n")[:-1]
    assert argv[argv.index("--host") + 1] == "chat-0:2,chat-0-1:2,chat-0-2:2"
    assert argv[argv.index("-np") + 1] == "6"
    assert argv[argv.index("plm_rsh_agent") + 1] == str(scripts / launch.RSH_AGENT)
    assert argv[argv.index("trtllm-llmapi-launch") + 1:] == launch.serve_args()
    gets = (tmp_path / "kubectl").read_text().splitlines()
    assert [g.split()[2] for g in gets] == ["chat-0-1", "chat-0-1", "chat-0-2", "chat-0-2"]   # waited for both
    r = subprocess.run(["/bin/sh", str(scripts / launch.RSH_AGENT), "chat-0-1", "orted", "-mca", "x", "1"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert (tmp_path / "kubectl").read_text().splitlines()[-1] == "exec chat-0-1 -c worker -- /bin/sh -c orted -mca x 1"
