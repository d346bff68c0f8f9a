"""`build-engine`: plan and build a gpt-oss engine for one GPU, or validate a built one on this machine."""

from __future__ import annotations

import argparse
import json
import sys

from builder.engine import EXIT_NO_PLAN
from builder.fit import INCOMPATIBLE, FitPlan, FitError, plan
from spec.registry import MODELS
from spec.registry.models import get_model
from spec.registry.gpus import GPUS
from spec.registry.quant_formats import QUANT_FORMATS

GB = 1e9
EXIT_INCOMPATIBLE = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build-engine",
        description="Plan a gpt-oss engine for a GPU: memory fit, parallelism, quant format, speed ceilings.",
        epilog=f"models: {', '.join(MODELS)}; gpus: {', '.join(GPUS)}; quants: auto, {', '.join(QUANT_FORMATS)}. "
               f"Exit status: 0 runnable or low-memory (or built), {EXIT_INCOMPATIBLE} incompatible, 2 bad request, "
               f"{EXIT_NO_PLAN} the target's TensorRT plan could not be built (nothing installed).")
    p.add_argument("--model", help="registry model name (optional with --checkpoint: read from its config.json)")
    p.add_argument("--gpu", help="target GPU profile")
    p.add_argument("--quant", default="auto", help="quant format, or auto (looked up per GPU architecture)")
    p.add_argument("--tp", type=int, help="tensor parallelism (default: the smallest that fits)")
    p.add_argument("--ep", type=int, help="expert parallelism (default 1)")
    p.add_argument("--max-seq-len", type=int, help="default: the model's full context")
    p.add_argument("--max-batch-size", type=int,
                   help="default: 1 for --plan; for a build 16, or fewer if 16 full-length sequences do not fit")
    p.add_argument("--kv-dtype", default=None,
                   help="KV-cache dtype: bf16 or fp8 (default: what the GPU's serving profile runs, fp8 on Blackwell)")
    p.add_argument("--plan", action="store_true", help="print the plan and stop")
    p.add_argument("--json", action="store_true", help="print the plan (or the built engine's manifest) as JSON")
    b = p.add_argument_group("building")
    b.add_argument("--checkpoint", help="source checkpoint folder: HF bf16, HF MXFP4 or OpenAI original "
                                        "(default: the shipped tiny model, or the Hugging Face cache for 20b/120b)")
    b.add_argument("--output", help="engine directory (default: engines/MODEL-GPU-QUANT-tpN)")
    b.add_argument("--cache-policy", default="on", choices=["on", "readonly", "redo", "off"])
    b.add_argument("--cache-dir", help="build cache (default: $GPTOSS_TRT_CACHE, else $XDG_CACHE_HOME/gptoss-trt, "
                                       "else ~/.cache/gptoss-trt)")
    b.add_argument("--cache-max-gb", type=float, metavar="GB",
                   help="evict least recently used cache entries past this size (default: $GPTOSS_TRT_CACHE_MAX_GB "
                        "or 100)")
    b.add_argument("--cache-info", action="store_true",
                   help="print what the build cache holds (entries, key, model/gpu/quant, bytes, last used) and its "
                        "limit, then stop (--json for JSON)")
    b.add_argument("--calib-file", help="calibration texts, one per line (NVFP4 W4A4 input scales, FP8 KV)")
    b.add_argument("--cross-build", action="store_true", help="build for --gpu although this machine has another GPU")
    b.add_argument("--graph-only", action="store_true",
                   help="targets whose engine is a TensorRT-RTX plan (RTX-class SMs): install the ONNX graph without "
                        "building the plan (engine.json records that there is none)")
    b.add_argument("--keep-graph", action="store_true",
                   help="RTX-class targets: keep tensorrt/model.onnx beside the built plan (it shares the "
                        "checkpoint's bytes where they are equal; the rest, mostly the experts in the GEMMs' layout, "
                        "is written again). Without it the graph is removed once the plan is built: the plan holds "
                        "the weights")
    b.add_argument("--plan-workspace-mib", type=int, metavar="MIB",
                   help="the plan builder's workspace memory limit (default: TensorRT's, the device's memory)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.add_argument("--validate", metavar="DIR", help="run a built engine on this machine's GPU and record it")
    return p


def format_plan(p: FitPlan) -> str:
    rows = [
        ("model / gpu", f"{p.model} on {p.gpu}"),
        ("quant", p.quant + (f" ({p.quant_note})" if p.quant_note else "")),
        ("parallelism", f"tp={p.tp} ep={p.ep}"),
        ("verdict", p.verdict.upper()),
        ("parameters", f"{p.params_total / 1e9:.2f}B total, {p.params_active / 1e9:.2f}B active per token"),
        ("weights per GPU", f"{p.weight_bytes_per_gpu / GB:.2f} GB of {p.memory_bytes_per_gpu / GB:.0f} GB"),
        ("runtime reserve", f"{p.runtime_reserve_bytes / GB:.2f} GB"),
        ("KV cache budget", f"{p.kv_budget_bytes_per_gpu / GB:.2f} GB per GPU ({p.kv_dtype})"),
        ("KV per token", f"{p.kv_bytes_per_token / 1024:.1f} KiB (full-attention layers)"),
        ("KV per sequence", f"{p.kv_bytes_per_sequence / 2**20:.1f} MiB at {p.max_seq_len} tokens "
                            f"(sliding layers: {p.sliding_kv_bytes_per_sequence / 2**20:.2f} MiB, bounded)"),
        ("max concurrent seqs", f"{p.max_concurrent_sequences} at {p.max_seq_len} tokens"),
        ("decode, batch 1", f"{p.decode_tokens_per_s_batch1:,.0f} tok/s ceiling "
                            f"({p.bytes_read_per_token_batch1 / GB:.2f} GB read per token)"),
        (f"decode, batch {p.max_batch_size}", f"{p.decode_tokens_per_s_batch_n:,.0f} tok/s ceiling "
                                             f"(sequences {p.max_seq_len // 2} tokens deep)"),
        ("prefill", f"{p.prefill_tokens_per_s:,.0f} tok/s ceiling"),
        ("kernels", ", ".join(f"{k}={v}" for k, v in p.kernels.items())),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"{'reason'.ljust(width)}  {r}" for r in p.reasons]
    return "\n".join(lines)


class Terminated(BaseException):
    """SIGTERM during a build: raised in the main thread so every `finally` (the staging folder's removal) runs."""


def _on_sigterm(_signum, _frame):
    raise Terminated()


def build_engine_main(argv: list[str] | None = None) -> int:
    """Ctrl-C: one line and exit 130; SIGTERM: the staging folder removed, one line and exit 143 (128 + 15).
    Either way --output is as it was (the install is one rename)."""
    import signal
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _build_engine_main(argv)
    except KeyboardInterrupt:
        print("build-engine: interrupted (Ctrl-C); the staging folder was removed and --output is unchanged",
              file=sys.stderr)
        return 130
    except Terminated:
        print("build-engine: stopped by SIGTERM; the staging folder was removed and --output is unchanged",
              file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _build_engine_main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.validate:
        return _run_validate(args.validate)
    if args.cache_info:
        return _run_cache_info(args)
    if not args.gpu or not (args.model or args.checkpoint):
        parser.error("--gpu and --model (or --checkpoint, whose config names the model) are required "
                     "(or --validate DIR)")
    if not args.model:
        from checkpoint.errors import CheckpointError
        try:
            args.model = model_from_checkpoint(args.checkpoint)
        except CheckpointError as e:
            print(f"build-engine: {e}", file=sys.stderr)
            return 2
    if args.plan:
        return _run_plan(args)
    return _run_build(args)


def model_from_checkpoint(folder: str):
    """The checkpoint's architecture: its registry entry when one matches, else a config named after the
    folder (fine-tunes and new sizes build without a registry entry)."""
    from checkpoint.config_io import model_config_from_checkpoint
    return model_config_from_checkpoint(folder)


def _run_plan(args) -> int:
    """The plan the build would follow: `--quant auto` resolved against the source the build would read."""
    from builder.engine.sources import source_quant_before_build
    try:
        model = args.model if not isinstance(args.model, str) else get_model(args.model)
    except KeyError as e:
        print(f"build-engine: {e.args[0]}", file=sys.stderr)
        return 2
    try:
        result = plan(model, args.gpu, quant=args.quant, tp=args.tp, ep=args.ep, max_seq_len=args.max_seq_len,
                      max_batch_size=args.max_batch_size or 1, kv_dtype=args.kv_dtype,
                      source_quant=source_quant_before_build(model, args.checkpoint))
    except FitError as e:
        print(f"build-engine: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_plan(result))
    return EXIT_INCOMPATIBLE if result.verdict == INCOMPATIBLE else 0


def _run_build(args) -> int:
    from builder.engine import BuildError
    from builder.engine.build import BuildRequest, build, dump_manifest
    from builder.engine.cache import CacheConfigError, CacheMiss
    from builder.engine.sources import SourceError
    req = BuildRequest(model=args.model, gpu=args.gpu, checkpoint=args.checkpoint, quant=args.quant, tp=args.tp,
                       ep=args.ep, max_seq_len=args.max_seq_len, max_batch_size=args.max_batch_size,
                       output=args.output, cache_policy=args.cache_policy, cache_dir=args.cache_dir,
                       calib_file=args.calib_file, kv_dtype=args.kv_dtype, cross_build=args.cross_build,
                       progress=not args.no_progress, graph_only=args.graph_only,
                       keep_graph=args.keep_graph, cache_max_bytes=_cache_max_bytes(args),
                       plan_workspace_bytes=None if args.plan_workspace_mib is None else args.plan_workspace_mib * 2**20)
    try:
        out = build(req)
    except FitError as e:
        print(f"build-engine: {e}", file=sys.stderr)
        return 2
    except BuildError as e:
        print(f"build-engine: {e}", file=sys.stderr)
        return e.exit_code
    except (CacheMiss, CacheConfigError, SourceError) as e:
        print(f"build-engine: {e}", file=sys.stderr)
        return 2
    except OSError as e:       # a read-only or full disk: the staging folder is gone, the old engine intact
        print(f"build-engine: error: {e.filename or args.output}: {e.strerror or e}; fix: check free space and "
              f"permissions where --output and the cache are written", file=sys.stderr)
        return 2
    if args.json:
        print(dump_manifest(out))
    return 0


def _cache_max_bytes(args) -> int | None:
    if args.cache_max_gb is None:
        return None
    if args.cache_max_gb < 0:
        raise SystemExit(f"build-engine: --cache-max-gb {args.cache_max_gb} is negative; fix: a size in GB >= 0")
    return int(args.cache_max_gb * GB)


def _run_cache_info(args) -> int:
    from pathlib import Path

    from builder.engine.cache import BuildCache, format_info
    from checkpoint.fsutil import cache_dir
    try:
        cache = BuildCache(Path(args.cache_dir) if args.cache_dir else cache_dir(),
                           max_bytes=_cache_max_bytes(args))
    except ValueError as e:
        print(f"build-engine: {e}", file=sys.stderr)
        return 2
    info = cache.info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _run_validate(engine_dir: str) -> int:
    from builder.engine import BuildError
    from builder.engine.validate import validate_command
    try:
        record = validate_command(engine_dir)
    except BuildError as e:
        print(f"build-engine: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(build_engine_main())
