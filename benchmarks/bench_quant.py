"""Quantization throughput on gpt-oss expert-shaped tensors: ours vs ModelOpt vs torchao vs memcpy.

    python benchmarks/bench_quant.py [--experts 2] [--dtype bf16|fp32|both] [--repeat 3]

The input is `--experts` experts of gpt-oss-20b's gate_up projection, [E, 5760, 2880] (all 32 experts
are 2.1 GB in fp32). MB/s counts input bytes (1 MB = 2**20 bytes). "memcpy" copies the same bytes once
(np.copyto into a preallocated array): the ceiling for anything that reads the input. Each timing is
the best of `--repeat` runs; torch and our quantizers both use every core the process may use.
ModelOpt's output is also checked to be byte-identical to ours.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import ml_dtypes
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numerics import (mxfp4_to_nvfp4_lossless, quantize_fp8_per_tensor,  # noqa: E402
                           quantize_mxfp4, quantize_nvfp4)

HIDDEN, INTER2 = 2880, 5760  # gpt-oss-20b: hidden size, 2 * intermediate size (gate_up rows)


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--dtype", choices=["bf16", "fp32", "both"], default="both")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-torchao", action="store_true")
    args = ap.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.quantization.qtensor import NVFP4QTensor
        torchao_nvfp4 = None
        if not args.no_torchao:
            try:
                from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize as torchao_nvfp4
            except Exception as e:  # noqa: BLE001 - report and go on without it
                print(f"torchao unavailable: {e}")

    shape = (args.experts, INTER2, HIDDEN)
    print(f"input {list(shape)} (gpt-oss-20b gate_up, {args.experts} of 32 experts); "
          f"torch threads {torch.get_num_threads()}, cpus {len(os.sched_getaffinity(0))}")
    rng = np.random.default_rng(0)
    base = (rng.standard_normal(shape, dtype=np.float32) * 0.02)

    dtypes = ["bf16", "fp32"] if args.dtype == "both" else [args.dtype]
    for name in dtypes:
        xn = base.astype(ml_dtypes.bfloat16) if name == "bf16" else base
        xt = torch.from_numpy(xn.view(np.int16)).view(torch.bfloat16) if name == "bf16" else torch.from_numpy(xn)
        mb = xn.nbytes / 2 ** 20
        rows: list[tuple[str, float]] = []

        dst = np.empty_like(xn)
        rows.append(("memcpy (ceiling)", best_time(lambda: np.copyto(dst, xn), args.repeat)))
        del dst
        ours = quantize_nvfp4(xn)
        rows.append(("ours  quantize_nvfp4 (modelopt recipe)", best_time(lambda: quantize_nvfp4(xn), args.repeat)))
        rows.append(("ours  quantize_nvfp4, 1 thread", best_time(lambda: quantize_nvfp4(xn, workers=1), args.repeat)))
        g = float(ours.global_scale)
        rows.append(("ours  quantize_nvfp4 (torchao recipe)",
                     best_time(lambda: quantize_nvfp4(xn, g, recipe="torchao"), args.repeat)))

        ref = {}

        def modelopt():
            ref["q"] = NVFP4QTensor.quantize(xt, 16, try_tensorrt=False)
        rows.append(("ModelOpt NVFP4QTensor.quantize", best_time(modelopt, max(1, min(args.repeat, 2)))))
        q, s, g_ref = ref.pop("q")
        same = (np.array_equal(q._quantized_data.numpy(), ours.packed)
                and np.array_equal(s.view(torch.uint8).numpy(), ours.block_scale.view(np.uint8))
                and np.float32(g_ref.item()) == ours.global_scale)
        del q, s
        if torchao_nvfp4 is not None:
            gt = torch.tensor(g, dtype=torch.float32)
            rows.append(("torchao nvfp4_quantize", best_time(lambda: torchao_nvfp4(xt, 16, gt), max(1, min(args.repeat, 2)))))
        rows.append(("ours  quantize_mxfp4 (rceil)", best_time(lambda: quantize_mxfp4(xn, "rceil"), args.repeat)))
        rows.append(("ours  quantize_fp8_per_tensor", best_time(lambda: quantize_fp8_per_tensor(xn), args.repeat)))
        blocks, scales = quantize_mxfp4(xn, "rceil")
        t_tc = best_time(lambda: mxfp4_to_nvfp4_lossless(blocks, scales), args.repeat)

        t_ref = dict(rows)["ModelOpt NVFP4QTensor.quantize"]
        t_copy = dict(rows)["memcpy (ceiling)"]
        print(f"\n{name} input, {mb:.0f} MB; ModelOpt output byte-identical to ours: {same}")
        print(f"{'':42s} {'MB/s':>9s} {'x ModelOpt':>11s} {'% memcpy':>9s}")
        for label, t in rows:
            print(f"{label:42s} {mb / t:9.1f} {t_ref / t:11.2f} {100 * t_copy / t:8.1f}%")
        mx_mb = (blocks.nbytes + scales.nbytes) / 2 ** 20
        print(f"{'ours  mxfp4_to_nvfp4_lossless':42s} {mx_mb / t_tc:9.1f}   (MB/s of MXFP4 bytes in, "
              f"{t_tc * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
