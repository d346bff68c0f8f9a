"""Random edits of one value in a built engine's engine.json or network.json, each read by every tool that reads
an engine (run-engine, serve-engine's repository step, write-model-repo, deploy-engine), in this process under an
address-space limit and a per-case alarm.

Every tool must either accept the engine or refuse it with its named error (exit 2, or the error class it
documents); a traceback, a timeout or a MemoryError is a failure. A value spec.engine_values.read_engine refuses
must be refused by every tool (the validator is shared). Run as a module from the repository root (the test does,
so the limits bind only this process):

    python -m tests.support.fuzz_engine_values --engine DIR --cases 300 --seed 0 --work DIR   # JSON summary
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import resource
import shutil
import signal
import sys
import traceback
from collections import Counter
from pathlib import Path

MEMORY_HEADROOM = 2 << 30          # address space allowed above what the process holds before the cases
CASE_SECONDS = 60
FILES = ("engine.json", "network.json")


def weird_value(rng: random.Random, old):
    choices = [10 ** 18, -(10 ** 18), 2 ** 31, 2 ** 63, 2 ** 64 + 1, -1, 0, 1e308, float("nan"), float("inf"),
               -float("inf"), "NaN", "10", "1e18", "", True, False, None, [], {}, [old], 0.5, 1e-300]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        choices += [old * 2, old + 1, old - 1, -old, old * 1000, old * 10 ** 6]
    return rng.choice(choices)


def leaves(obj, path=()):
    """(path, value) of every scalar leaf and every list of scalars (ids) under obj."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, path + (k,))
    elif isinstance(obj, list) and obj and all(isinstance(v, (dict, list)) for v in obj):
        for i, v in enumerate(obj):
            yield from leaves(v, path + (i,))
    else:
        yield path, obj


def mutate(data, rng: random.Random) -> str:
    # Numbers are what this fuzz is about: pick a numeric leaf three times in four.
    all_leaves = list(leaves(data))
    numeric = [(p, v) for p, v in all_leaves if isinstance(v, (int, float, list)) and not isinstance(v, bool)]
    path, old = rng.choice(numeric if numeric and rng.random() < 0.75 else all_leaves)
    if isinstance(old, list) and old and rng.random() < 0.6:     # an id inside an id list
        i = rng.randrange(len(old))
        new_list = list(old)
        new_list[i] = weird_value(rng, old[i])
        new = new_list
    else:
        new = weird_value(rng, old)
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = new
    return f"{'.'.join(map(str, path))} = {json.dumps(new, allow_nan=True)[:40]}"


# -- the tools, each as its CLI or entry point runs it; -> "ok" | "refused" ------------------------------
def run_engine(engine: Path, work: Path) -> str:
    from runtime.cli import main
    return {0: "ok", 2: "refused"}.get(main([str(engine), "--input-ids", "1,2", "--max-tokens", "1",
                                             "--executor", "reference"]), "exit")


def serve_engine(engine: Path, work: Path) -> str:
    # serve-engine's step before a server starts: it prints any exception as its error and exits 2, so the
    # exception's class is what tells a named refusal from a bug here.
    from deploy.serve_cli import resolve_repository
    from model_repo.backends import BackendError
    from model_repo.write import ModelRepoError
    try:
        resolve_repository(engine, "reference", work)
    except (BackendError, ModelRepoError):
        return "refused"
    return "ok"


def write_model_repo(engine: Path, work: Path) -> str:
    from model_repo.write import main
    return {0: "ok", 2: "refused"}.get(main([str(engine), "--output", str(work / "repo")]), "exit")


def deploy_engine(engine: Path, work: Path) -> str:
    from deploy.deploy_cli import main
    return {0: "ok", 2: "refused"}.get(main([str(engine), "--target", "k8s", "--out", str(work / "k8s")]), "exit")


TOOLS = {"run-engine": run_engine, "serve-engine": serve_engine, "write-model-repo": write_model_repo,
         "deploy-engine": deploy_engine}


class CaseTimeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise CaseTimeout(f"over {CASE_SECONDS} s")


def run(engine: Path, cases: int, seed: int, work: Path) -> dict:
    from spec.engine_values import ENGINE_ERRORS, read_engine
    pristine = {f: (engine / f).read_text() for f in FILES}
    rng = random.Random(seed)
    signal.signal(signal.SIGALRM, _alarm)
    vm = _vm_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_HEADROOM, hard))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts, per_tool = Counter(), Counter()
    failures, examples = [], {"refused": [], "accepted": []}
    for n in range(cases):
        name = rng.choice(FILES)
        data = json.loads(pristine[name])
        what = f"{name}: {mutate(data, rng)}"
        (engine / name).write_text(json.dumps(data, indent=1, allow_nan=True))
        try:
            read_engine(engine)
            verdict = "ok"
        except ENGINE_ERRORS as e:
            verdict = "refused"
            message = str(e)
        outcomes = {}
        for tool, fn in TOOLS.items():
            case_dir = work / f"case{n}-{tool}"
            case_dir.mkdir(parents=True)
            signal.alarm(CASE_SECONDS)
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                    outcomes[tool] = fn(engine, case_dir)
                if outcomes[tool] == "exit":
                    failures.append(f"{what}: {tool} exited with an unexpected status: {err.getvalue()[-500:]}")
            except BaseException as e:  # noqa: BLE001 - everything that escapes a tool is what this counts
                outcomes[tool] = "crash"
                failures.append(f"{what}: {tool}: {type(e).__name__}\n{traceback.format_exc()[-1500:]}")
            finally:
                signal.alarm(0)
                shutil.rmtree(case_dir, ignore_errors=True)
            per_tool[f"{tool} {outcomes[tool]}"] += 1
            if verdict == "refused" and outcomes[tool] == "ok":
                failures.append(f"{what}: read_engine refused it ({message[:200]}) but {tool} accepted it")
        counts["refused" if verdict == "refused" else "accepted"] += 1
        if len(examples["refused" if verdict == "refused" else "accepted"]) < 5:
            examples["refused" if verdict == "refused" else "accepted"].append(
                what + (f" -> {message[:160]}" if verdict == "refused" else f" -> {outcomes}"))
        for f in FILES:
            (engine / f).write_text(pristine[f])
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    crashes = sum(v for k, v in per_tool.items() if k.endswith(" crash"))
    return {"cases": cases, "refused": counts["refused"], "accepted": counts["accepted"], "crashes": crashes,
            "per_tool": dict(sorted(per_tool.items())), "n_failures": len(failures), "failures": failures[:20],
            "examples": examples,
            "max_rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", required=True, type=Path, help="a built engine directory (edited in place, restored)")
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", required=True, type=Path)
    args = p.parse_args(argv)
    # Import what the tools import before the limit is set, so the limit measures the cases, not the imports.
    import deploy.deploy_cli, deploy.serve_cli, model_repo.write, runtime.cli, runtime.executors  # noqa: F401, E401
    import torch  # noqa: F401
    print(json.dumps(run(args.engine, args.cases, args.seed, args.work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
