"""Peer engines for benchmarks/bench_executors.py, run from the benchmark's own virtual environment (never this
project's dependencies), on the same saved random HF gpt-oss weights as our executors.

    python -m venv /work/scratch/moe/peers && /work/scratch/moe/peers/bin/pip install onnxruntime-genai torch transformers
    python benchmarks/bench_executors.py --peers /work/scratch/moe/peers      # adds the onnxruntime-genai column

onnxruntime-genai: its model builder (`onnxruntime_genai.models.builder`, gpt-oss support) turns the HF folder
into its own ONNX model (fp32, CPU), then its Generator runs greedy over the same token ids; this file is also
the child script that runs in the peers' interpreter (`python peers.py genai MODEL_DIR IDS N`), printing one
JSON line: the generated ids, prefill seconds (append_tokens of the prompt + the first token) and per-token
times. llama.cpp (llama-cpp-python) is not wired here: see the README for why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def python_of(venv: Path) -> Path:
    py = Path(venv) / "bin" / "python"
    if not py.is_file():
        raise FileNotFoundError(f"--peers {venv}: no bin/python; create it with python -m venv {venv} and pip "
                                f"install onnxruntime-genai torch transformers there")
    return py


TOKENIZER = Path(__file__).resolve().parents[1] / "builder" / "assets" / "tiny"


def build_genai(venv: Path, hf_dir: Path, out: Path, precision: str = "fp32") -> Path:
    """onnxruntime-genai's builder on the HF folder -> its model folder (genai_config.json + model.onnx). The
    builder insists on a tokenizer: a random model gets the shipped tiny model's (the runs feed token ids)."""
    if (out / "genai_config.json").is_file():
        return out
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (hf_dir / name).is_file():
            shutil.copy(TOKENIZER / name, hf_dir / name)
    cmd = [str(python_of(venv)), "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(out.parent / f"{out.name}-cache")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(out.parent / f"{out.name}-cache", ignore_errors=True)
    if r.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"onnxruntime-genai builder failed on {hf_dir}: {' | '.join(tail)}")
    return out


def run_genai(venv: Path, model_dir: Path, ids: list[int], new_tokens: int, threads: int = 2) -> dict:
    r = subprocess.run([str(python_of(venv)), __file__, "genai", str(model_dir), ",".join(map(str, ids)),
                        str(new_tokens), str(threads)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"onnxruntime-genai run failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _child_genai(model_dir: str, ids: str, new_tokens: str, threads: str) -> None:
    import onnxruntime_genai as og
    prompt = [int(t) for t in ids.split(",")]
    n = int(new_tokens)
    cfg = og.Config(model_dir)
    model = og.Model(cfg)
    params = og.GeneratorParams(model)
    # capacity at least a sliding window (its GroupQueryAttention refuses a smaller cache); stops after n tokens
    params.set_search_options(do_sample=False, max_length=max(len(prompt) + n, 1024), min_length=len(prompt) + n)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(prompt)
    times, out = [], []
    while not gen.is_done() and len(out) < n:
        gen.generate_next_token()
        times.append(time.perf_counter())
        out.append(int(gen.get_next_tokens()[0]))
    print(json.dumps({"tokens": out, "prefill_s": times[0] - t0, "times": times}))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "genai":
        _child_genai(*sys.argv[2:6])
    else:
        print(__doc__)
