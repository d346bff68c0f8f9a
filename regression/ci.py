"""The tiny regression gate of every CI run: build the tiny engines, run the `tiny` suite on all of them through
the reference runtime (one combined report), then once through a real Triton server on the bf16 engine.

    python -m regression.ci [--out engines/regression] [--formats bf16,fp8,mxfp4,nvfp4] [--no-triton]

Engines (build-engine, build cache on): bf16 for `cpu`; fp8 for `l40s` (Ada's format); mxfp4 for `h100`; nvfp4
for `b200` (the GPU targets cross-built: the reference runtime emulates each format's numerics on CPU).
Reports: OUT/report/ (report.json, report.md, report.png: the formats side by side) and OUT/report-triton/.
Exit status: the worst of the runs (0 pass, 1 regression, 2 bad input: an engine that does not build, a missing
or stale golden - re-record with `engine-regression OUT/tiny-bf16 --record` and commit regression/goldens/tiny.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# quant -> (gpu, quant option) the engine is built for
ENGINES = {"bf16": ("cpu", "bf16"), "fp8": ("l40s", "fp8"), "mxfp4": ("h100", "mxfp4"), "nvfp4": ("b200", "nvfp4")}


def _say(msg: str) -> None:
    print(f"regression-ci: {msg}", file=sys.stderr, flush=True)


def build_engines(out: Path, formats: list[str], cache_dir: str | None = None) -> tuple[dict, dict]:
    """-> ({format: engine dir}, {format: why it did not build})."""
    from builder.engine.build import BuildRequest, build
    built, failed = {}, {}
    for fmt in formats:
        gpu, quant = ENGINES[fmt]
        dest = out / f"tiny-{fmt}"
        try:
            built[fmt] = build(BuildRequest(model="tiny", gpu=gpu, quant=quant, output=str(dest), cross_build=True,
                                            cache_dir=cache_dir, progress=False))
        except SystemExit as e:          # some build stages exit with a message
            failed[fmt] = f"build-engine exited: {e}"
        except Exception as e:  # noqa: BLE001 - report every format's failure, then fail the run
            failed[fmt] = f"{type(e).__name__}: {e}"
    return built, failed


def run_triton(engine: Path, out: Path, extra: list[str]) -> int:
    from deploy.server import TritonServer
    from model_repo.write import write_model_repo
    from regression.cli import main as regression
    repo = write_model_repo(engine, out / "triton-repo")
    server = TritonServer(repo, log_file=out / "tritonserver.log", exit_timeout_s=15)
    _say(f"starting tritonserver on {engine} (log {out / 'tritonserver.log'})")
    server.start(timeout_s=300)
    try:
        return regression(["--url", server.grpc_url, "--report", str(out / "report-triton")] + extra)
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="regression-ci", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="engines/regression", help="engines and reports go here")
    p.add_argument("--formats", default="bf16,fp8,mxfp4,nvfp4", help="comma-separated, from " + ", ".join(ENGINES))
    p.add_argument("--no-triton", action="store_true", help="skip the run through a real Triton server")
    p.add_argument("--cache-dir", help="build cache (default: build-engine's)")
    p.add_argument("--goldens", help="golden folder (default regression/goldens)")
    args = p.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in ENGINES]
    if unknown or not formats:
        _say(f"unknown format(s) {unknown}; use {', '.join(ENGINES)}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    built, failed = build_engines(out, formats, args.cache_dir)
    for fmt, why in failed.items():
        _say(f"the tiny {fmt} engine did not build: {why}")
    extra = ["--goldens", args.goldens] if args.goldens else []
    from regression.cli import main as regression
    rc = 2 if failed else 0
    if built:
        rc = max(rc, regression([str(built[f]) for f in formats if f in built] + ["--report", str(out / "report")]
                                + extra))
    if not args.no_triton:
        if "bf16" in built:
            rc = max(rc, run_triton(built["bf16"], out, extra))
        else:
            _say("no bf16 engine: the Triton run needs it")
            rc = max(rc, 2)
    _say(f"exit {rc}; reports under {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
