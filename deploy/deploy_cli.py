"""`deploy-engine`: from an engine directory to what runs it elsewhere.

    deploy-engine ENGINE_DIR --target docker  --out DIR [--wheel dist/gptoss_trt-*.whl]
    deploy-engine ENGINE_DIR --target compose --out DIR [--image NAME] [--bind 127.0.0.1]
    deploy-engine ENGINE_DIR --target k8s     --out DIR [--image NAME] [--replicas N] [--gpus-per-node N]
                  [--namespace NS] [--engine-pvc CLAIM] [--gpu-product LABEL] [--autoscale-max N]

docker: the image's Dockerfile, pinned requirements and .dockerignore (put the project's wheel in DIR/dist).
compose: compose.yaml plus that docker/ folder. k8s: one YAML file per object, for `kubectl apply -f DIR`.
DIR is written in full beside itself and renamed into place; a DIR that deploy-engine did not write is refused.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import yaml

from checkpoint.fsutil import install_dir, staging_dir
from deploy import compose, docker, k8s
from deploy.engine_info import DeployError, EngineInfo, read_manifest
from deploy.inputs import check_args, check_image, check_path, check_ports, comment_text
from deploy.sizing import Placement, deploy_data, placement

TARGETS = ("docker", "compose", "k8s")
MARKER = ".gptoss-deploy.json"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 40   # LeaderWorkerSet pod names add "-<group>-<worker>" and must stay DNS labels (63)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def to_yaml(obj: dict, header: str = "") -> str:
    return header + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy-engine", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine_dir", type=Path, help="engine directory (engine.json inside)")
    p.add_argument("--target", required=True, choices=TARGETS)
    p.add_argument("--out", required=True, type=Path, help="folder to write (replaced only if deploy-engine wrote it)")
    p.add_argument("--image", help="image name (default gptoss-trt:VERSION-gpu or -cpu)")
    p.add_argument("--replicas", type=int, default=1, help="k8s: serving replicas (default 1)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs one node (or the compose host) offers "
                   "(default: the GPU registry's figure for the engine's GPU)")
    p.add_argument("--namespace", default="default", help="k8s namespace (default: default)")
    p.add_argument("--name", help="object / project name (default gptoss-MODEL)")
    p.add_argument("--engine-pvc", help="k8s: an existing PersistentVolumeClaim holding the engine directory "
                   "(default: write a claim NAME-engine)")
    p.add_argument("--gpu-product", help="k8s: nvidia.com/gpu.product node label value (default: from "
                   "deploy/data/gpu_products.yaml)")
    p.add_argument("--autoscale-max", type=int, help="k8s: also write a HorizontalPodAutoscaler up to N replicas")
    p.add_argument("--bind", default="127.0.0.1", help="compose: host address the ports are published on")
    p.add_argument("--wheel", type=Path, help="docker/compose: this project's wheel, copied into the build context")
    return p


def _name(args: argparse.Namespace, info: EngineInfo) -> str:
    name = args.name or re.sub(r"[^a-z0-9]+", "-", f"gptoss-{info.model}".lower()).strip("-")[:MAX_NAME].strip("-")
    if not DNS_LABEL.match(name) or len(name) > MAX_NAME:
        raise DeployError(f"--name {name!r}: must be lowercase letters, digits and '-', at most {MAX_NAME} "
                          f"characters, starting and ending with a letter or digit")
    return name


def render(args: argparse.Namespace) -> tuple[dict[str, str], EngineInfo, Placement]:
    """Relative path -> file text for everything --target writes. Raises DeployError on bad input."""
    check_args(args, docker.wheel_name())
    check_ports(deploy_data()["ports"])
    info = read_manifest(args.engine_dir)
    check_path("ENGINE_DIR (resolved)", info.engine_dir)    # it is a bind-mount source and in every header
    place = placement(info, args.gpus_per_node or info.gpu.max_gpus_per_node)
    name = _name(args, info)
    image = args.image or f"{docker.PROJECT}:{docker.project_version()}-{'cpu' if info.on_cpu else 'gpu'}"
    check_image("--image (default)", image)
    header = "# " + comment_text(f"Written by deploy-engine for {info.engine_dir} ({info.model} on {info.gpu.name}, "
                                 f"{info.quant}, tp={info.tp} pp={info.pp}).") + "\n"
    files: dict[str, str] = {}
    if args.target == "docker":
        files.update(docker.files(info.on_cpu))
    elif args.target == "compose":
        files["compose.yaml"] = to_yaml(compose.compose(info, place, name, image, args.bind), header)
        files.update({f"docker/{k}": v for k, v in docker.files(info.on_cpu).items()})
    else:
        opt = k8s.K8sOptions(name=name, image=image, namespace=args.namespace, replicas=args.replicas,
                             engine_pvc=args.engine_pvc, gpu_product=args.gpu_product,
                             autoscale_max=args.autoscale_max)
        for fname, obj in k8s.objects(info, place, opt):
            files[fname] = to_yaml(obj, header)
    return files, info, place


def write(out: Path, files: dict[str, str], wheel: Path | None, record: dict) -> None:
    """Write everything into a staging folder beside OUT, then rename it into place."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise DeployError(f"--out {out}: exists and was not written by deploy-engine; choose an empty or new "
                          f"folder (nothing of yours is replaced)")
    tmp = staging_dir(out.resolve(), "deploy")
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if wheel is not None:
            dist = tmp / ("docker/dist" if record["target"] == "compose" else "dist")
            dist.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, dist / wheel.name)
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n")
        install_dir(tmp, out.resolve())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        files, info, place = render(args)
        record = {"engine_dir": str(info.engine_dir), "target": args.target, "files": sorted(files),
                  "world_size": place.world_size, "gpus_per_pod": place.gpus_per_pod, "pods_per_replica": place.pods}
        write(args.out, files, args.wheel, record)
    except DeployError as e:
        print(f"deploy-engine: error: {e}", file=sys.stderr)
        return 2
    kind = ("CPU" if info.on_cpu else f"{place.gpus_per_pod} GPU(s) a pod, {place.pods} pod(s) a replica"
            + (" (LeaderWorkerSet)" if place.multinode and args.target == "k8s" else ""))
    print(f"deploy-engine: wrote {len(files)} files for --target {args.target} to {args.out} ({kind})")
    for rel in sorted(files):
        print(f"  {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
