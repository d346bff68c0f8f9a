"""run-engine DIR (--prompt TEXT | --input-ids 1,2,3) [--max-tokens N] [--temperature T] [--seed S]
[--top-k K] [--top-p P] [--stop-ids 1,2] [--ignore-eos] [--logits-out FILE.npy] [--json]
[--executor {auto,onnxruntime,reference,tensorrt}]

DIR is an engine directory (network.json + checkpoint) or any checkpoint folder the converter reads.
--ignore-eos decodes past the end tokens (only --stop-ids stop it), so a benchmark gets exactly --max-tokens.
--logits-out saves the float32 logits of every prompt position, shape [prompt_len, vocab].
--executor: ONNX Runtime on the network's fp32 ONNX graph (plugins/onnx), the torch reference runtime
(any dtype; every quant format it emulates), or the engine's TensorRT plan (GPU). auto (default): the rule
serve-engine shares (runtime/executors/choice.py): the TensorRT-RTX plan on a GPU of its SM, else onnxruntime,
the faster on CPU (benchmarks/bench_executors.py), when it runs the engine exactly (float32, unquantized or
weight-only formats) and its graph's estimated memory for the prompt fits, else reference; a request ONNX Runtime
fails is then run on the reference runtime. The choice, its reason and any fallback go to stderr, one line each.
--json prints {"output_ids": [...], "finish_reason": ..., "prompt_ids": [...], "text": ... (with a tokenizer),
"timing": {"prefill_s", "decode_s", "decode_tokens_per_s"}}: prefill_s from the call to the first generated token,
decode_s from the first to the last one, decode_tokens_per_s = (tokens - 1) / decode_s (null under 2 tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-ids wants comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("--input-ids is empty")
    return ids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run-engine", description="Run an engine or checkpoint on the reference "
                                "runtime (CPU) and print the generated tokens.")
    p.add_argument("dir", help="engine directory or checkpoint folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs tokenizer.json in DIR)")
    src.add_argument("--input-ids", type=_parse_ids, help="prompt token ids, e.g. 1,2,3")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop-ids", type=_parse_ids, default=None,
                   help="stop token ids (default: the network's eos_token_ids)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="do not stop at the network's eos_token_ids (--stop-ids still stop)")
    p.add_argument("--logits-out", help="save float32 prompt logits [prompt_len, vocab] to this .npy file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    from runtime.executors import DEFAULT_EXECUTOR, EXECUTORS
    p.add_argument("--executor", choices=tuple(EXECUTORS), default=DEFAULT_EXECUTOR,
                   help="what runs the network (default auto: the engine's TensorRT-RTX plan on a GPU of its SM; "
                        "else onnxruntime, the fastest on CPU, when it runs this engine exactly and its memory "
                        "estimate for the prompt fits; else reference. tensorrt: the plan, GPU, unvalidated)")
    p.add_argument("--onnx", help="with --executor onnxruntime: run this fp32 ONNX graph, exported in the "
                   "onnxruntime-cpu lowering (a TensorRT graph, e.g. the one under the engine's tensorrt/, is "
                   "refused), instead of exporting the network")
    return p


def timing(t0: float, stamps: list[float]) -> dict:
    """Clock at the call and at each generated token -> prefill / decode seconds and decode tokens/s."""
    if not stamps:
        return {"prefill_s": None, "decode_s": None, "decode_tokens_per_s": None}
    decode = stamps[-1] - stamps[0]
    return {"prefill_s": stamps[0] - t0, "decode_s": decode,
            "decode_tokens_per_s": (len(stamps) - 1) / decode if len(stamps) > 1 and decode > 0 else None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch

    from checkpoint.errors import CheckpointError
    from spec.network import NetworkError
    from runtime.api import RuntimeLoadError, find_checkpoint, load_tokenizer
    from runtime.executors import load_runtime
    from runtime.executors.choice import ExecutorChoiceError
    from runtime.model import WeightError
    from runtime.sampling import SamplingParams
    from plugins.reference.linear import UnsupportedQuantError

    try:
        if args.executor == "onnxruntime" and args.dtype != "float32":
            raise RuntimeLoadError(f"--executor onnxruntime runs float32 graphs on CPU; got --dtype {args.dtype} "
                                   f"(use --executor reference for bfloat16)")
        if args.onnx is not None and not Path(args.onnx).is_file():
            raise RuntimeLoadError(f"--onnx {args.onnx}: no such file")
        if args.prompt is not None:
            tokenizer = load_tokenizer(Path(args.dir), find_checkpoint(Path(args.dir)))
            if tokenizer is None:
                raise RuntimeLoadError(f"{args.dir}: --prompt needs a tokenizer.json in the directory; "
                                       f"none found, use --input-ids instead")
            ids = tokenizer.encode(args.prompt, add_special_tokens=False).ids
        else:
            ids = args.input_ids
        # The prompt's prefill is the largest forward: auto weighs ONNX Runtime's memory for it.
        rt = load_runtime(args.dir, args.executor, dtype=getattr(torch, args.dtype), onnx_path=args.onnx,
                          tokens=len(ids))
        stops = tuple(args.stop_ids or ()) if args.ignore_eos or args.stop_ids is not None else None
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed, stop_token_ids=stops,
                                prompt_logits=bool(args.logits_out))
        results = []
        t0 = time.perf_counter()
        stamps = [time.perf_counter() for _ in rt.generate_stream([ids], params, results)]
        [res] = results
    except (CheckpointError, NetworkError, RuntimeLoadError, ExecutorChoiceError, WeightError, UnsupportedQuantError, ValueError,
            NotImplementedError) as e:
        print(f"run-engine: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from runtime.executors.auto import is_executor_failure, one_line
        if not is_executor_failure(e):
            raise
        print(f"run-engine: error: the {args.executor} executor could not run this request "
              f"({type(e).__name__}: {one_line(e)}); --executor auto runs it on the reference runtime", file=sys.stderr)
        return 2
    if args.logits_out:
        np.save(args.logits_out, res.prompt_logits.numpy().astype(np.float32))
    out = {"prompt_ids": list(ids), "output_ids": res.output_ids, "finish_reason": res.finish_reason,
           "timing": timing(t0, stamps)}
    if rt.tokenizer is not None:
        out["text"] = rt.decode(res.output_ids)
    if args.json:
        print(json.dumps(out))
    else:
        print(out.get("text", " ".join(map(str, res.output_ids))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
