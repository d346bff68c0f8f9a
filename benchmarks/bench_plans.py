"""TensorRT-RTX plan builds, one row per case: build time, peak RSS, plan bytes, layers and GEMM layers.

    python benchmarks/bench_plans.py --workdir DIR [--cases tiny,20b-2layer,20b] [--gpu rtx-5090]
                                     [--checkpoint-20b DIR] [--json] [--keep] [--reuse]

Each case first writes the engine with `build-engine --graph-only` (checkpoint conversion, calibration and the
ONNX graph in the target SM's dtype, no plan), then builds the plan from that engine's tensorrt/model.onnx in
a fresh child process (builder.tensorrt.plan.build_plan, as build-engine calls it), so the RSS column is the
plan build's alone: VmHWM of the child (anonymous memory plus file pages resident at the peak), and "anon", the
peak of its RssAnon sampled every 0.2 s (what the builder allocated; mapped graph pages are released while it
runs, builder/tensorrt/file_pages.py). `--keep` leaves DIR/engine-CASE-GPU (and its logs,
DIR/CASE-GPU.{engine,plan}.log); `--reuse` builds only the plan from such an engine (the full 20b's conversion
and calibration take about 30 minutes here; the plan needs only the engine's tensorrt/ folder). The columns
plan MiB / graph MiB and peak RSS / graph MiB are the ratios to the graph's weights (the ONNX file and its
external data), the peer every plan build must hold at least once.

Cases: `tiny` (the shipped tiny model), `20b-2layer` (checkpoint.synthetic: gpt-oss-20b's released shapes,
names and MXFP4 experts, the first 2 layers, the tiny model's tokenizer copied in for calibration), `20b` (the
full 24 layers: --checkpoint-20b DIR, or a synthetic one written into --workdir: 13.8 GB, and the engine and
graph need about 30 GB more). The target is --gpu (default rtx-5090: SM120, NVFP4 W4A4, FP4 GEMMs).
Not a test: run it under `flock /work/scratch/heavy.lock` on the shared machines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

# case -> (synthetic layers or None for the shipped tiny model / a full model, registry model)
CASES = {"tiny": (None, "tiny"), "20b-2layer": (2, "20b"), "20b": (None, "20b")}


def _hwm_kb() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))


def _status_kb(*keys: str) -> dict[str, int]:
    out = {}
    for line in open("/proc/self/status"):
        k = line.split(":")[0]
        if k in keys:
            out[k] = int(line.split()[1])
    return out


def _sample_rss(peaks: dict, stop) -> None:
    """Peaks of RssAnon (what the builder allocated) and RssFile (mapped graph pages), sampled every 0.2 s:
    VmHWM is their sum at its peak, and only the anonymous part cannot be given back to the kernel."""
    while not stop.wait(0.2):
        for k, v in _status_kb("RssAnon", "RssFile").items():
            peaks[k] = max(peaks.get(k, 0), v)


def child(onnx_path: str, plan_path: str, sm: int, limits: str) -> None:
    """In the child: build one plan and print its numbers as JSON (the last stdout line)."""
    import threading
    from builder.tensorrt.plan import Limits, build_plan
    from builder.tensorrt.targets import RTX
    peaks, stop = {}, threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(peaks, stop), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    r = build_plan(Path(onnx_path), Path(plan_path), RTX, sm, Limits(**json.loads(limits)))
    stop.set()
    sampler.join()
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "peak_rss_kb": _hwm_kb(),
                      "peak_anon_kb": peaks.get("RssAnon"), "peak_file_kb": peaks.get("RssFile"),
                      "plan_bytes": r.plan_bytes, "layers": r.layers, "gemm_layers": r.gemm_layers,
                      "builder_version": r.builder_version}))


def checkpoint_for(case: str, work: Path, full_20b: Path | None) -> Path:
    layers, model = CASES[case]
    if case == "tiny":
        from builder.engine.sources import shipped_checkpoint
        from spec.registry.models import get_model
        return shipped_checkpoint(get_model("tiny"))
    if case == "20b" and full_20b:
        return full_20b
    from checkpoint.synthetic import write_synthetic
    folder = work / f"ckpt-{case}"
    if not (folder / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        write_synthetic(folder, model, layers=layers)
    return folder


def graph_bytes(engine: Path) -> int:
    t = engine / "tensorrt"
    return sum(f.stat().st_size for f in t.iterdir() if f.name.startswith("model.onnx"))


def run_case(case: str, gpu: str, work: Path, full_20b: Path | None, keep: bool, reuse: bool = False) -> dict:
    from spec.manifest import EngineManifest
    row = {"case": case, "gpu": gpu}
    ckpt = checkpoint_for(case, work, full_20b)
    engine = work / f"engine-{case}-{gpu}"
    if reuse and (engine / "engine.json").is_file():
        row["engine_seconds"] = None          # kept from an earlier --keep run: only the plan is rebuilt
    else:
        shutil.rmtree(engine, ignore_errors=True)
        args = ["--checkpoint", str(ckpt)] if case != "tiny" else ["--model", "tiny"]
        t0 = time.perf_counter()
        r = subprocess.run([str(BIN / "build-engine"), *args, "--gpu", gpu, "--graph-only", "--output",
                            str(engine), "--cache-policy", "off", "--no-progress"], capture_output=True, text=True)
        row["engine_seconds"] = round(time.perf_counter() - t0, 1)
        (work / f"{case}-{gpu}.engine.log").write_text(r.stderr)
        if r.returncode:
            row["error"] = f"build-engine --graph-only exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
            return row
    t = EngineManifest.read(engine).tensorrt
    row.update(quant=EngineManifest.read(engine).quant, sm=t["sm"], graph_dtype=t["graph_dtype"],
               graph_bytes=graph_bytes(engine))
    plan = work / f"{case}.sm{t['sm']}.plan"
    r = subprocess.run([sys.executable, __file__, "--child", str(engine / t["onnx"]), str(plan), str(t["sm"]),
                        json.dumps(t["limits"])], capture_output=True, text=True)
    (work / f"{case}-{gpu}.plan.log").write_text(r.stderr)
    if r.returncode:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        row["error"] = f"plan build exit {r.returncode}: {lines[-1] if lines else 'no output'}"
    else:
        row.update(json.loads(r.stdout.strip().splitlines()[-1]))
    if not keep:
        shutil.rmtree(engine, ignore_errors=True)
        plan.unlink(missing_ok=True)
    return row


def print_table(rows: list[dict]) -> None:
    mib = 2 ** 20
    print(f"{'case':<12} {'gpu':<9} {'SM':>4} {'quant':<7} {'dtype':<9} {'graph MiB':>9} {'plan MiB':>9} "
          f"{'plan/graph':>10} {'seconds':>8} {'peak RSS MiB':>12} {'anon MiB':>8} {'RSS/graph':>9} {'layers':>7} "
          f"{'GEMMs':>6}")
    for r in rows:
        if "plan_bytes" not in r:
            print(f"{r['case']:<12} {r['gpu']:<9} {r.get('error', '')}")
            continue
        g = r["graph_bytes"]
        rss = r["peak_rss_kb"] * 1024
        print(f"{r['case']:<12} {r['gpu']:<9} {r['sm']:>4} {r['quant']:<7} {r['graph_dtype']:<9} {g / mib:>9.1f} "
              f"{r['plan_bytes'] / mib:>9.1f} {r['plan_bytes'] / g:>10.2f} {r['seconds']:>8.1f} {rss / mib:>12.0f} "
              f"{(r.get('peak_anon_kb') or 0) / 1024:>8.0f} {rss / g:>9.2f} {r['layers']:>7} {r['gemm_layers']:>6}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="tiny,20b-2layer", help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--gpu", default="rtx-5090", help="an RTX-class target (TensorRT-RTX builds it here)")
    p.add_argument("--workdir", type=Path, required=False, default=None)
    p.add_argument("--checkpoint-20b", type=Path, default=None, help="the full 20b checkpoint (else synthetic)")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    p.add_argument("--keep", action="store_true", help="keep engines and plans")
    p.add_argument("--reuse", action="store_true", help="reuse an engine a --keep run left in --workdir "
                   "(skips the checkpoint conversion and graph export; only the plan is rebuilt)")
    p.add_argument("--child", nargs=4, metavar=("ONNX", "PLAN", "SM", "LIMITS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.child[1], int(a.child[2]), a.child[3])
        return
    cases = [c for c in a.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"bench_plans: unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    import tempfile
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-plans-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        rows.append(run_case(case, a.gpu, work, a.checkpoint_20b, a.keep, a.reuse))
        print(f"bench_plans: {case}: {rows[-1]}", file=sys.stderr, flush=True)
    print_table(rows)
    if a.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
