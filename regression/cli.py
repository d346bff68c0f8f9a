"""engine-regression: does the engine still say what it said?

    engine-regression ENGINE_DIR [ENGINE_DIR ...] [--url HOST:PORT ...] [--suite SUITE] [--report DIR] [--record]

Runs a suite (regression/suites/<suite>.yaml; default: the engine's own model's suite) against engine
directories (the reference runtime, emulating each engine's quant numerics) and/or served endpoints (our Triton
models over gRPC), compares with the suite's golden (regression/goldens/<suite>.json, recorded from a bf16 engine
with --record) and checks the thresholds of each engine's quant format (regression/thresholds.yaml). Several
targets in one call make one combined report (--report DIR: report.json, report.md, report.png).

Exit status: 0 every target passes; 1 a regression (each failed metric is named with its value and threshold);
2 bad input (no target, unknown suite, missing or stale golden - record one with --record -, no thresholds for
the format, a GPU suite without a GPU, an engine or server that cannot be used).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from regression import core
from regression.suite import SuiteError, available_suites, load_suite
from regression.targets import EngineTarget, ServerTarget, TargetError

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    pass


def _say(msg: str) -> None:
    print(f"engine-regression: {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="engine-regression", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engines", nargs="*", metavar="ENGINE_DIR", help="engine directories (build-engine output)")
    p.add_argument("--url", action="append", default=[], metavar="HOST:PORT",
                   help="a served endpoint (serve-engine), gRPC; may be repeated")
    p.add_argument("--suite", help=f"suite name ({', '.join(available_suites())}) or a suite .yaml; "
                                   f"default: the engine's model")
    p.add_argument("--report", metavar="DIR", help="write report.json, report.md and report.png here")
    p.add_argument("--record", action="store_true",
                   help="record the suite's golden from this (bf16) engine instead of checking against it")
    p.add_argument("--goldens", metavar="DIR", help="golden folder (default: regression/goldens)")
    p.add_argument("--thresholds", metavar="FILE", help="thresholds file (default: regression/thresholds.yaml)")
    p.add_argument("--model-name", default="tensorrt_llm_bls", help="served front model for --url "
                                                                     "(default tensorrt_llm_bls)")
    p.add_argument("--tokenizer", metavar="ENGINE_DIR",
                   help="with --record --url: the engine directory whose tokenizer the server uses (the golden "
                        "needs token ids, which a server does not return)")
    p.add_argument("--device", default="cpu", help="reference-runtime device for engine directories (cpu, cuda)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="reference-runtime activation dtype (default float32)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads of the reference runtime (default 1: the tiny model gains nothing from "
                        "more, and a loaded CI box loses a lot to oversubscribed OpenMP threads); 0: torch's default")
    p.add_argument("--allow-quantized-golden", action="store_true",
                   help="with --record: allow recording from a quantized engine (thresholds assume bf16)")
    return p.parse_args(argv)


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def gpu_suite_message(suite) -> str:
    refs = suite.raw.get("accuracy_references") or {}
    acc = "; ".join(f"{task} {r.get('key')} {r.get('accuracy')} (threshold {r.get('threshold')})"
                    for task, r in refs.items())
    return (f"suite {suite.name!r} is a GPU suite: it runs on a GPU box against a served or GPU-loaded {suite.model} "
            f"engine, not on this machine" + ("" if _cuda_available() else " (no CUDA device here)")
            + f". How to run it (golden, candidates, upstream accuracy references{': ' + acc if acc else ''}): "
              f"{suite.path}")


def make_targets(args) -> list:
    if not args.engines and not args.url:
        if args.suite:
            suite = load_suite(args.suite)
            if suite.gpu_only:
                raise BadInput(gpu_suite_message(suite))
        raise BadInput("give at least one ENGINE_DIR or --url HOST:PORT")
    targets = []
    for d in args.engines:
        if not Path(d).is_dir():
            raise BadInput(f"{d}: no such engine directory (build one with build-engine, or pass --url for a "
                           f"served engine)")
        targets.append(EngineTarget(d, device=args.device, dtype=args.dtype))
    targets += [ServerTarget(u, args.model_name) for u in args.url]
    return targets


def pick_suite(args, targets):
    if args.suite:
        return load_suite(args.suite)
    models = {t.info().get("model") for t in targets}
    if None in models:
        raise BadInput("cannot tell the engine's model (no engine.json 'model'); pass --suite")
    if len(models) > 1:
        raise BadInput(f"the targets are different models ({', '.join(sorted(models))}); run one suite per call "
                       f"or pass --suite")
    return load_suite(models.pop())


def check_runnable(suite, targets, args) -> None:
    for t in targets:
        model = t.info().get("model")
        if model and model != suite.model:
            raise BadInput(f"{t.name} is model {model!r}, suite {suite.name!r} is for {suite.model!r}")
        if suite.gpu_only and t.kind == "engine" and not (args.device.startswith("cuda") and _cuda_available()):
            raise BadInput(gpu_suite_message(suite) + ("" if not _cuda_available() else "; or pass --device cuda"))
    if suite.gpu_only and not suite.segments:
        raise BadInput(f"suite {suite.name!r} has no held-out text on this machine ({suite.path}: heldout.files); "
                       f"it runs on a GPU box, as the suite file describes")


class _TokenizedServer:
    """A server target plus a local tokenizer: what --record --url needs (golden token ids)."""

    def __init__(self, server: ServerTarget, engine_dir: str):
        from model_repo.tokenizer import load_tokenizer
        self.server, self.kind, self.name = server, server.kind, server.name
        self.tok = load_tokenizer(Path(engine_dir), "auto")

    def info(self):
        return self.server.info()

    def _ids(self, text, n):
        ids = list(self.tok.encode(text))
        if len(ids) != n:
            raise TargetError(f"the local tokenizer gives {len(ids)} tokens for a text the server read as {n}: "
                              f"--tokenizer is not the served engine's tokenizer")
        return ids

    def generate(self, texts, max_tokens):
        gens = self.server.generate(texts, max_tokens)
        for text, g in zip(texts, gens):
            g.prompt_ids = self._ids(text, g.n_prompt)
        return gens

    def score(self, text):
        s = self.server.score(text)
        s.ids = self._ids(text, s.n)
        return s


def do_record(args, suite, targets) -> int:
    if len(targets) != 1:
        raise BadInput("--record takes exactly one target (a bf16 engine)")
    t = targets[0]
    info = t.info()
    if info.get("quant") not in (None, "bf16") and not args.allow_quantized_golden:
        raise BadInput(f"{t.name} is a {info.get('quant')} engine; goldens are recorded from a bf16 engine "
                       f"(the thresholds are relative to bf16); pass --allow-quantized-golden to record anyway")
    if t.kind == "url":
        if not args.tokenizer:
            raise BadInput("--record --url needs --tokenizer ENGINE_DIR (a server returns no prompt token ids)")
        t = _TokenizedServer(t, args.tokenizer)
    t0 = time.perf_counter()
    golden = core.record_golden(suite, t, progress=_say)
    path = core.golden_path(suite, args.goldens)
    core.write_golden(golden, path)
    print(f"recorded golden {path}: suite {suite.name}, {len(golden['prompts'])} prompts x {suite.max_tokens} tokens, "
          f"{golden['positions']} held-out positions, perplexity {golden['perplexity']:.4f}, from {t.name} "
          f"({time.perf_counter() - t0:.1f} s)")
    return EXIT_OK


def run_targets(args, suite, targets) -> dict:
    golden = core.load_golden(suite, args.goldens)
    tdata = core.load_thresholds(args.thresholds)
    results = []
    for t in targets:
        info = t.info()
        core.check_same_source(golden, info)
        thr = core.thresholds_for(tdata, info.get("quant"), suite.name)
        t0 = time.perf_counter()
        obs = core.observe(suite, t, progress=_say)
        metrics, extra = core.compute_metrics(golden, obs)
        checks = core.check(metrics, thr)
        results.append({**info, "metrics": metrics, "info": extra, "checks": checks,
                        "passed": all(c["pass"] for c in checks), "seconds": time.perf_counter() - t0})
        t.close()
    g = {k: golden.get(k) for k in ("recorded_at", "perplexity", "positions", "heldout_file")}
    g["path"] = golden["_path"]
    g["engine"] = {k: (golden.get("engine") or {}).get(k) for k in ("target", "model", "quant", "gpu")}
    return {"suite": suite.name, "model": suite.model, "golden": g,
            "thresholds_file": str(Path(args.thresholds) if args.thresholds else core.THRESHOLDS_FILE),
            "results": results, "passed": all(r["passed"] for r in results)}


def print_summary(report: dict) -> None:
    from regression.report import _fmt
    print(f"suite {report['suite']}: golden {report['golden']['path']} (perplexity "
          f"{report['golden']['perplexity']:.4f})")
    for r in report["results"]:
        cells = ", ".join(f"{c['metric']} {_fmt(c['metric'], c['value'])}{'' if c['pass'] else ' FAIL'}"
                          for c in r["checks"])
        print(f"  {'PASS' if r['passed'] else 'FAIL'} {r['target']} [{r.get('quant')}]: {cells}")
    for r in report["results"]:
        for c in r["checks"]:
            if not c["pass"]:
                v = c["value"]
                shown = "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"
                print(f"REGRESSION {r['target']} [{r.get('quant')}]: {c['metric']} = {shown}, threshold "
                      f"{c['op']} {c['threshold']:.6g}", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    threads = None
    if args.threads > 0 and args.engines:
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        if threads is not None:
            import torch
            torch.set_num_threads(threads)


def _main(args) -> int:
    try:
        if args.report:
            check_report_dir(args.report, args.engines)
        targets = make_targets(args)
        suite = pick_suite(args, targets)
        check_runnable(suite, targets, args)
        if args.record:
            return do_record(args, suite, targets)
        report = run_targets(args, suite, targets)
    except (BadInput, SuiteError, core.GoldenError, core.ThresholdError, TargetError) as e:
        _say(f"error: {e}")
        return EXIT_BAD_INPUT
    print_summary(report)
    if args.report:
        from regression.report import write_report
        try:
            paths = write_report(report, args.report)
        except OSError as e:
            _say(f"error: --report {args.report}: could not write the report ({e.strerror or e}); the run "
                 f"{'passed' if report['passed'] else 'found a regression'}, see above")
            return EXIT_BAD_INPUT
        print(f"report: {paths['md']} ({paths['json'].name}" + (f", {paths['png'].name})" if paths["png"] else ")"))
        if paths.get("note"):
            _say(paths["note"])
    return EXIT_OK if report["passed"] else EXIT_REGRESSION


def check_report_dir(report: str, engines) -> None:
    """--report stays apart from the engines it reports on, and is writable, before anything runs."""
    import tempfile
    from checkpoint.fsutil import UnsafeOutputError, check_output_apart
    try:
        check_output_apart(report, {f"ENGINE_DIR {e}": e for e in engines}, "--report")
    except UnsafeOutputError as e:
        raise BadInput(str(e)) from None
    try:
        Path(report).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=report, prefix=".write-test-"):
            pass
    except OSError as e:
        raise BadInput(f"--report {report}: not writable ({e.strerror or e}); fix: choose a folder you can "
                       f"write to") from None


if __name__ == "__main__":
    sys.exit(main())
