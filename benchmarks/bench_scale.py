"""Real-size builds: `build-engine` on full-size synthetic gpt-oss checkpoints, one row per build.

    python benchmarks/bench_scale.py --workdir DIR [--checkpoint-20b DIR] [--cases 20b-b200,20b-h100,...]
                                     [--cache-policy off] [--keep] [--json]

Each case runs the real CLI in a subprocess and records: the command, its exit code, wall seconds, the
seconds and the peak tree RSS of each build stage ("[k/6]" lines, timed as they arrive on stderr), the peak
RSS of the whole process tree (the sum of VmRSS over build-engine and its children, polled every 0.2 s; and, from
getrusage(RUSAGE_CHILDREN), the largest single process), the engine's bytes on disk (allocated blocks, hard
links counted once) against the checkpoint's bytes, and the build cache's bytes. Built engines and the cache
are deleted after each case unless --keep (a 20b engine is its 13.8 GB checkpoint, plus the graph
on TensorRT-RTX plan targets; check free disk first). Checkpoints are written by checkpoint.synthetic (released shapes and names,
MXFP4 experts, random values) when not given: the full 20b (13.8 GB) and 120b slices of 2 and 4 layers
(120b's 128-expert layers; memory should not grow with depth, time extrapolates to 36 layers).
Not a test: on the project's 2-core / 24 GB machines the whole set takes about an hour; run it under
`flock /work/scratch/heavy.lock` there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

# name -> (checkpoint key, build-engine arguments)
CASES = {
    "20b-cpu": ("20b", ["--gpu", "cpu"]),
    "20b-h100": ("20b", ["--gpu", "h100", "--cross-build"]),
    "20b-b200": ("20b", ["--gpu", "b200", "--cross-build"]),                 # NVFP4 W4A4, calibrated
    "20b-rtx-pro-6000": ("20b", ["--gpu", "rtx-pro-6000", "--quant", "mxfp4", "--cross-build"]),
    "120b-2l-h100": ("120b-2l", ["--gpu", "h100", "--cross-build"]),
    "120b-4l-h100": ("120b-4l", ["--gpu", "h100", "--cross-build"]),
}
CHECKPOINTS = {"20b": ("20b", None), "120b-2l": ("120b", 2), "120b-4l": ("120b", 4)}


def disk_bytes(path: Path) -> int:
    """Allocated bytes under path, each inode once (hard links between files count once)."""
    if not path.exists():
        return 0
    seen, total = set(), 0
    for p in [path, *path.rglob("*")]:
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
    return total


def _tree_rss(root_pid: int) -> tuple[int, int]:
    """Sums of VmRSS and of RssAnon (bytes) over root_pid and its descendants, from /proc. The difference is
    file-backed pages (mapped checkpoint or graph data: clean, shared with the page cache, evictable)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/status") as f:
                kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                      if k in ("VmRSS", "RssAnon")}
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = (kb.get("VmRSS", 0) * 1024, kb.get("RssAnon", 0) * 1024)
    total, anon, todo = 0, 0, [root_pid]
    while todo:
        pid = todo.pop()
        r, a = rss.get(pid, (0, 0))
        total, anon = total + r, anon + a
        todo += children.get(pid, [])
    return total, anon


def run_case(cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0, 0]                              # tree VmRSS, tree RssAnon
    done = threading.Event()
    stages, tail = [], []
    stage_peak: dict[int, int] = {}            # index into stages (-1: before the first stage line) -> peak
    stage_anon: dict[int, int] = {}

    def poll():
        while not done.is_set():
            rss, anon = _tree_rss(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
            k = len(stages) - 1
            stage_peak[k] = max(stage_peak.get(k, 0), rss)
            stage_anon[k] = max(stage_anon.get(k, 0), anon)
            done.wait(0.2)
    threading.Thread(target=poll, daemon=True).start()
    out_holder = {}
    reader = threading.Thread(target=lambda: out_holder.setdefault("out", proc.stdout.read()), daemon=True)
    reader.start()
    for line in proc.stderr:
        now = time.perf_counter() - t0
        tail = (tail + [line.rstrip()])[-12:]
        if line.startswith("build-engine: [") and "/6]" in line[:20]:
            stages.append((line.split("]", 1)[0].split("[", 1)[1], now, line.split("]", 1)[1].strip()))
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    done.set()
    reader.join()
    child_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    stage_s, stage_rss, stage_anon_rss = {}, {}, {}
    for i, (k, start, what) in enumerate(stages):
        end = stages[i + 1][1] if i + 1 < len(stages) else seconds
        stage_s[f"[{k}] {what}"] = round(end - start, 1)
        stage_rss[f"[{k}] {what}"] = stage_peak.get(i, 0)
        stage_anon_rss[f"[{k}] {what}"] = stage_anon.get(i, 0)
    return {"exit_code": rc, "seconds": round(seconds, 1), "peak_rss_tree": peak[0], "peak_anon_rss_tree": peak[1],
            "stage_peak_anon_rss_tree": stage_anon_rss,
            "peak_rss_largest_process": child_max if child_max > before * 1024 else None,
            "stages": stage_s, "stage_peak_rss_tree": stage_rss, "stderr_tail": tail if rc else tail[-3:]}


def _smoke_runs(engine: Path) -> list[dict]:
    """The build's smoke runs as engine.json recorded them (runtime, ok, tokens, tok/s), before the engine goes."""
    try:
        records = json.loads((engine / "engine.json").read_text()).get("validated_on", [])
    except (OSError, ValueError):
        return []
    keep = ("runtime", "device", "ok", "output_ids", "tokens_per_s", "note")
    return [{k: r[k] for k in keep if k in r} for r in records]


def ensure_checkpoint(key: str, workdir: Path, given: dict) -> Path:
    if key in given:
        return given[key]
    folder = workdir / f"ckpt-{key}"
    if not (folder / "config.json").exists():
        from checkpoint.synthetic import write_synthetic
        model, layers = CHECKPOINTS[key]
        shutil.rmtree(folder, ignore_errors=True)
        print(f"writing synthetic {key} to {folder} ...", file=sys.stderr, flush=True)
        write_synthetic(folder, model, layers=layers)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="where checkpoints, engines and the cache go")
    p.add_argument("--checkpoint-20b", type=Path, help="an existing full-size 20b checkpoint (else written)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--cache-policy", default="on", choices=["on", "off", "redo"])
    p.add_argument("--keep", action="store_true", help="keep built engines (default: delete after measuring)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (one object per line)")
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    given = {"20b": a.checkpoint_20b} if a.checkpoint_20b else {}
    cache = a.workdir / "cache"
    rows = []
    for name in a.cases.split(","):
        key, args = CASES[name]
        ckpt = ensure_checkpoint(key, a.workdir, given)
        out = a.workdir / "engines" / name
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(BIN / "build-engine"), "--checkpoint", str(ckpt), *args, "--output", str(out),
               "--cache-dir", str(cache), "--cache-policy", a.cache_policy, "--no-progress"]
        row = {"case": name, "command": " ".join(["build-engine", *cmd[1:]])}
        row.update(run_case(cmd, dict(os.environ)))
        ck_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        row["smoke_runs"] = _smoke_runs(out)
        row.update({"checkpoint_bytes": ck_bytes, "engine_bytes": disk_bytes(out), "cache_bytes": disk_bytes(cache),
                    "plan_built": (out / "tensorrt").is_dir() and any((out / "tensorrt").rglob("*.plan")),
                    "engine_over_checkpoint": round(disk_bytes(out) / ck_bytes, 3) if ck_bytes else None})
        if not a.keep:                 # the cache holds hard links to the engine: both go, or no disk comes back
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
        rows.append(row)
        if a.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{name:18} exit {row['exit_code']:>3}  {row['seconds']:>7.1f} s  peak RSS (tree) "
                  f"{row['peak_rss_tree'] / 1e9:5.2f} GB (anonymous {row['peak_anon_rss_tree'] / 1e9:5.2f})  engine {row['engine_bytes'] / 1e9:6.2f} GB "
                  f"({row['engine_over_checkpoint']}x ckpt)  cache {row['cache_bytes'] / 1e9:6.2f} GB",
                  flush=True)
            for stage, s in row["stages"].items():
                print(f"    {s:>7.1f} s  {row['stage_peak_rss_tree'][stage] / 1e9:5.2f} GB "
                      f"({row['stage_peak_anon_rss_tree'][stage] / 1e9:5.2f} anonymous)  {stage}")
            for smoke in row["smoke_runs"]:
                print(f"    smoke run: {smoke}")
    if not a.keep:
        shutil.rmtree(a.workdir / "engines", ignore_errors=True)


if __name__ == "__main__":
    main()
