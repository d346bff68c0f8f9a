"""One MoE layer of a model's real shapes (default 20b: hidden 2880, 32 experts top-4) with MXFP4 experts, on ONNX
Runtime's CPU provider, in the two CPU lowerings side by side: "onnxruntime-cpu" (experts decoded by a table that
ONNX Runtime folds into fp32 initializers at session start) and "onnxruntime-cpu-packed" (experts kept as their
bytes, decoded at run time for the routed experts only, plugins/onnx/fp4.py).

    python benchmarks/bench_fp4_experts.py [--model 20b] [--prefill 128] [--steps 20] [--threads 2]

Each lowering runs in its own process (peak RSS is that process's): session start seconds, peak RSS, one
decode step (1 token) ms, a prefill of --prefill tokens ms, and whether both give the same output (max rel diff).
Weights are random MXFP4 codes with block exponents in a band the lossless NVFP4 transcode holds. Run it under
`flock /work/scratch/heavy.lock` on a shared machine (the folded form holds the layer's experts in fp32).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOWERINGS = ("onnxruntime-cpu-packed", "onnxruntime-cpu")


def moe_layer(model: str):
    from spec.network import ExpertLinear, Linear, MoE
    from spec.registry import get_model
    c = get_model(model)
    H, inter, E = c.hidden_size, c.intermediate_size, c.num_experts
    m = MoE(num_experts=E, top_k=c.experts_per_token,
            router=Linear("moe.router.weight", "moe.router.bias", H, E),
            gate=ExpertLinear("moe.gate.weight", "moe.gate.bias", E, H, inter, quant="mxfp4"),
            up=ExpertLinear("moe.up.weight", "moe.up.bias", E, H, inter, quant="mxfp4"),
            down=ExpertLinear("moe.down.weight", "moe.down.bias", E, inter, H, quant="mxfp4"))
    return c, m


def random_tensors(m, seed: int = 0) -> dict:
    import torch

    from numerics.mxfp4 import MXFP4Weight
    rng = np.random.default_rng(seed)
    t = {"moe.router.weight": torch.from_numpy(rng.standard_normal((m.num_experts, m.router.in_features),
                                                                   dtype=np.float32) * 0.05),
         "moe.router.bias": torch.from_numpy(rng.standard_normal(m.num_experts, dtype=np.float32) * 0.1)}
    for lin in (m.gate, m.up, m.down):
        blocks = rng.integers(0, 256, (lin.num_experts, lin.out_features, lin.in_features // 32, 16), dtype=np.uint8)
        scales = rng.integers(118, 123, (lin.num_experts, lin.out_features, lin.in_features // 32), dtype=np.uint8)
        t[lin.weight] = MXFP4Weight(blocks, scales)
        t[lin.bias] = torch.from_numpy(rng.standard_normal((lin.num_experts, lin.out_features), dtype=np.float32) * 0.1)
    return t


def export(model: str, lowering: str, path: Path) -> None:
    from plugins.onnx.graph import Graph
    from plugins.onnx.moe import emit_moe
    from plugins.onnx.weights import WeightSource
    c, m = moe_layer(model)
    g = Graph("moe", "float32", lowering)
    h = g.input("h", "float32", ["batch", "seq", c.hidden_size])
    g.output(emit_moe(g, h, m, WeightSource(random_tensors(m))), "y", "float32", ["batch", "seq", c.hidden_size])
    g.save(path)


def run_one(model: str, lowering: str, prefill: int, steps: int, threads: int, out: Path) -> dict:
    import onnxruntime as ort
    c, _ = moe_layer(model)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        path = Path(tmp) / "moe.onnx"
        export(model, lowering, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        start_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    x1 = rng.standard_normal((1, 1, c.hidden_size), dtype=np.float32)
    xp = rng.standard_normal((1, prefill, c.hidden_size), dtype=np.float32)
    sess.run(None, {"h": x1})
    times = []
    for i in range(steps):
        x = rng.standard_normal((1, 1, c.hidden_size), dtype=np.float32)
        t0 = time.perf_counter()
        sess.run(None, {"h": x})
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    yp = sess.run(None, {"h": xp})[0]
    prefill_s = time.perf_counter() - t0
    np.save(out.with_suffix(".npy"), yp)
    return {"lowering": lowering, "session_start_s": start_s, "decode_ms": 1e3 * float(np.median(times)),
            "prefill_ms": 1e3 * prefill_s, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="20b")
    p.add_argument("--prefill", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lowering", choices=LOWERINGS, help=argparse.SUPPRESS)   # the child process's one
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.lowering:
        print(json.dumps(run_one(a.model, a.lowering, a.prefill, a.steps, a.threads, Path(a.out))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lowering in LOWERINGS:
            out = Path(tmp) / lowering
            r = subprocess.run([sys.executable, __file__, "--model", a.model, "--prefill", str(a.prefill), "--steps",
                                str(a.steps), "--threads", str(a.threads), "--lowering", lowering, "--out", str(out)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                rows.append({"lowering": lowering, "error": r.stderr.strip().splitlines()[-1] if r.stderr else "?"})
                continue
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            rows[-1]["y"] = np.load(out.with_suffix(".npy"))
    ok = [r for r in rows if "y" in r]
    diff = (float(np.abs(ok[0]["y"] - ok[1]["y"]).max() / np.abs(ok[1]["y"]).max()) if len(ok) == 2 else None)
    print(f"one {a.model} MoE layer, MXFP4 experts, ONNX Runtime CPU, {a.threads} threads")
    print(f"{'lowering':<24} {'start s':>8} {'peak RSS GB':>12} {'decode ms':>10} {'prefill ms':>11}")
    for r in rows:
        if "error" in r:
            print(f"{r['lowering']:<24} failed: {r['error']}")
            continue
        print(f"{r['lowering']:<24} {r['session_start_s']:>8.2f} {r['peak_rss_gb']:>12.2f} {r['decode_ms']:>10.1f} "
              f"{r['prefill_ms']:>11.1f}")
    if len(ok) == 2:
        a0, a1 = ok
        print(f"packed / folded: peak RSS {a0['peak_rss_gb'] / a1['peak_rss_gb']:.2f}x, decode time "
              f"{a0['decode_ms'] / a1['decode_ms']:.2f}x, prefill time {a0['prefill_ms'] / a1['prefill_ms']:.2f}x; "
              f"outputs agree to {diff:.1e} (relative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
