"""Random corruptions of a tiny HF checkpoint, each converted in this process under an address-space limit.

Every case must end in a CheckpointError that says how to fix it, or a conversion whose tensors equal the
(corrupted) source's, and the destination (an earlier conversion) must be byte-for-byte as it was unless
the conversion succeeded. Run as a module from the repository root (the test does, so the memory limit binds only this process):

    python -m tests.support.fuzz_checkpoint --cases 1000 --seed 0 --work DIR     # prints a JSON summary
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import shutil
import struct
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import torch

from checkpoint.config_io import hf_config_dict
from checkpoint.convert import convert_checkpoint, load_canonical
from checkpoint.convert.mapping import expand
from checkpoint.errors import CheckpointError
from checkpoint.safetensors_io import DTYPES, SafetensorsWriter, TensorSpec
from spec.registry.models import ModelConfig

CONFIG = ModelConfig(name="fuzz", num_layers=2, hidden_size=32, head_dim=8, num_q_heads=4, num_kv_heads=2,
                     vocab_size=64, mlp="moe", intermediate_size=32, num_experts=4, experts_per_token=2,
                     sliding_window=4, rope_scaling_factor=4.0, rope_original_max_position=32,
                     max_position_embeddings=128)
MEMORY_HEADROOM = 1 << 30          # address space allowed above what the process holds before the cases


def write_base(folder: Path, seed: int = 0) -> None:
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    ex = expand("hf", CONFIG)
    specs = [TensorSpec(n, "BF16", shape) for n, (_, shape) in ex.shapes.items()]
    w = SafetensorsWriter(folder / "model.safetensors", specs)
    for s in specs:
        w.write(s.name, (0.1 * torch.randn(s.shape, generator=g)).to(torch.bfloat16))
    w.close()
    (folder / "config.json").write_text(json.dumps(hf_config_dict(CONFIG, mxfp4=False), indent=1))
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 128}')


# -- corruptions ------------------------------------------------------------------------------------
def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _put_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _weird_value(rng: random.Random, old):
    choices = [0, -1, -7, float("nan"), float("inf"), -float("inf"), 1e30, 2 ** 40, 2 ** 31 - 1, 1e-300, True,
               "12", None, [], {}, [old], {"x": old}, 0.5, 3.7]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        choices += [old * 2, old + 1, old - 1, -old, old * 1000, old / 3]
    return rng.choice(choices)


def corrupt_config(folder: Path, rng: random.Random) -> str:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    key = rng.choice(sorted(cfg) + ["rope_parameters"] * 4)
    if key == "rope_parameters":
        sub = rng.choice(sorted(cfg["rope_parameters"]))
        cfg["rope_parameters"][sub] = _weird_value(rng, cfg["rope_parameters"][sub])
        key = f"rope_parameters.{sub}"
    elif rng.random() < 0.1:
        del cfg[key]
        key = f"-{key}"
    else:
        cfg[key] = _weird_value(rng, cfg[key])
    path.write_text(json.dumps(cfg))            # json writes NaN/Infinity, which Python's reader accepts
    return f"config {key}"


def corrupt_header_bytes(folder: Path, rng: random.Random) -> str:
    path = folder / "model.safetensors"
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    how = rng.choice(["flip", "flip", "length", "truncate", "nest"])
    if how == "flip":
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(8 + n)] = rng.randrange(256)
    elif how == "length":
        raw[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 8, 2 ** 30, 2 ** 63, rng.randrange(2 ** 64)]))
    elif how == "truncate":
        del raw[rng.randrange(len(raw)):]
    else:                                       # a deeply nested JSON header
        deep = b"[" * 100_000 + b"]" * 100_000
        raw = bytearray(struct.pack("<Q", len(deep)) + deep)
    path.write_bytes(bytes(raw))
    return f"header {how}"


def corrupt_tensor_entry(folder: Path, rng: random.Random) -> str:
    path = folder / "model.safetensors"
    header, data = _header(path)
    name = rng.choice(sorted(k for k in header if k != "__metadata__"))
    entry = header[name]
    what = rng.choice(["shape", "shape", "dtype", "offsets", "rename", "drop"])
    if what == "shape":
        shape = list(entry["shape"])
        i = rng.randrange(len(shape)) if shape else 0
        if shape and rng.random() < 0.7:
            shape[i] = rng.choice([0, 1, shape[i] * 2, shape[i] + 1, 2 ** 40, -1])
        else:
            shape = rng.choice([[], shape + [1], shape[:-1], [math.prod(shape)]])
        entry["shape"] = shape
    elif what == "dtype":
        entry["dtype"] = rng.choice(sorted(DTYPES) + ["F4", "bf16", 7])
    elif what == "offsets":
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[b, a], [a, b + 2], [a + 2, b], [0, b - a], [-1, b], [a, 2 ** 62]])
    elif what == "rename":
        header[name.replace("layers.1", "layers.7").replace("layers.0", "layers.600") + rng.choice(["", ".x"])] = \
            header.pop(name)
    else:
        del header[name]
    _put_header(path, header, data)
    return f"tensor {what}"


def corrupt_files(folder: Path, rng: random.Random, outside: Path) -> str:
    what = rng.choice(["rm-config", "rm-weights", "link-aux-out", "link-weights-in", "aux-dir", "index",
                       "empty-index", "stray-shard", "unreadable-config"])
    if what == "rm-config":
        (folder / "config.json").unlink()
    elif what == "rm-weights":
        (folder / "model.safetensors").unlink()
    elif what == "link-aux-out":             # a secret elsewhere linked in as a tokenizer file
        os.symlink(outside / "secret.txt", folder / rng.choice(["tokenizer.json", "special_tokens_map.json"]))
    elif what == "link-weights-in":          # links inside the folder are fine
        os.rename(folder / "model.safetensors", folder / "blob")
        os.symlink("blob", folder / "model.safetensors")
    elif what == "aux-dir":
        (folder / "tokenizer.json").mkdir()
    elif what == "index":
        shards = [f"model-{i:05d}.safetensors" for i in range(rng.choice([2, 50]))]
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {f"t{i}": s for i, s in enumerate(shards)}}))
    elif what == "empty-index":
        (folder / "model.safetensors.index.json").write_text(rng.choice(['{"weight_map": 5}', "[" * 50_000, "{}"]))
    elif what == "stray-shard":
        shutil.copy(folder / "model.safetensors", folder / "model-copy.safetensors")
    else:
        (folder / "config.json").chmod(0)
    return f"files {what}"


def corrupt(folder: Path, rng: random.Random, outside: Path) -> str:
    kind = rng.choices(["config", "header", "tensor", "files"], weights=[4, 2, 3, 2])[0]
    fn = {"config": corrupt_config, "header": corrupt_header_bytes, "tensor": corrupt_tensor_entry}.get(kind)
    return fn(folder, rng) if fn else corrupt_files(folder, rng, outside)


# -- checks -----------------------------------------------------------------------------------------
def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def same_model(src: Path, dst: Path) -> bool:
    """The conversion holds the source's architecture and every tensor bit for bit."""
    import dataclasses
    with load_canonical(src) as a, load_canonical(dst) as b:
        arch = [dataclasses.replace(c.config, name="", eos_token_ids=()) for c in (a, b)]
        return arch[0] == arch[1] and a.names() == b.names() and all(torch.equal(a.get(n), b.get(n))
                                                                  for n in a.names())


def run(cases: int, seed: int, work: Path) -> dict:
    base, outside, dst = work / "base", work / "outside", work / "out" / "dst"
    write_base(base)
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the engine")
    convert_checkpoint(base, dst, "hf", progress=False)             # the user's earlier conversion
    before = tree_digest(dst)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_HEADROOM, hard))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes, failures = Counter(), []
    rng = random.Random(seed)
    t0 = time.perf_counter()
    try:
        for i in range(cases):
            src = work / f"case{i}"
            shutil.copytree(base, src, symlinks=True)
            what = corrupt(src, rng, outside)
            target = rng.choice(["hf", "hf", "hf-mxfp4"])
            try:
                convert_checkpoint(src, dst, target, force=True, progress=False)
            except CheckpointError as e:
                if "fix:" not in str(e):
                    failures.append(f"{i} {what}: error without a fix: {e}")
                elif tree_digest(dst) != before:
                    failures.append(f"{i} {what}: destination changed by a failed conversion")
                outcomes["error " + what] += 1
            except BaseException as e:  # noqa: BLE001 - anything else is what the fuzz looks for
                failures.append(f"{i} {what} -> {target}: {type(e).__name__}: {e}\n{traceback.format_exc()[-800:]}")
            else:
                if target == "hf" and not same_model(src, dst):
                    failures.append(f"{i} {what}: converted, but the tensors differ from the source's")
                outcomes["converted " + what] += 1
                shutil.rmtree(dst)
                convert_checkpoint(base, dst, "hf", progress=False)
                before = tree_digest(dst)
            leftovers = [p.name for p in dst.parent.iterdir() if p.name != "dst"]
            if leftovers:
                failures.append(f"{i} {what}: left {leftovers} beside the destination")
                for p in leftovers:
                    shutil.rmtree(dst.parent / p, ignore_errors=True)
            for p in src.rglob("*"):
                if not p.is_symlink():
                    p.chmod(0o755 if p.is_dir() else 0o644)
            shutil.rmtree(src)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return {"cases": cases, "seconds": round(time.perf_counter() - t0, 2),
            "errors": sum(v for k, v in outcomes.items() if k.startswith("error")),
            "converted": sum(v for k, v in outcomes.items() if k.startswith("converted")),
            "outcomes": dict(sorted(outcomes.items())),
            "max_rss_growth_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1),
            "address_space_limit_mib": round((vm + MEMORY_HEADROOM) / 2**20), "failures": failures[:20],
            "n_failures": len(failures)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(run(a.cases, a.seed, Path(a.work))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
