"""Quality of every quantized checkpoint format against bf16, on the reference runtime.

    python benchmarks/quant_quality.py [--model builder/assets/tiny] [--heldout FILE] [--calib-file FILE]

Writes each format with convert-checkpoint (fp8 and nvfp4 W4A4 calibrated on the built-in texts or
--calib-file; nvfp4 weight-only and mxfp4 need none), runs the held-out text through each in windows of
--ctx tokens, and prints per format: mean logit cosine vs bf16 (over all positions), top-1 agreement with
bf16, and held-out perplexity. Held-out text: --heldout, else MODEL/heldout.txt, else the built-in
paragraphs below (written for this script; none of them is in the calibration set).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> (convert-checkpoint target, calibrated?, kv cache)
FORMATS = {
    "bf16": (None, False, None),
    "fp8": ("hf-fp8", True, None),
    "mxfp4": ("hf-mxfp4", False, None),
    "nvfp4 (W4A4)": ("hf-nvfp4", True, None),
    "nvfp4 (W4A4) + fp8 kv": ("hf-nvfp4", True, "fp8"),
    "nvfp4 weight-only": ("hf-nvfp4", False, None),
}

HELDOUT = """The village sat at the edge of a wide valley, where the morning fog lingered until noon. Every
spring the farmers waited for the river to rise, because the flood brought new soil to their fields.
Most of the houses were built from grey stone, and their roofs were covered with thick moss.

A computer program is a list of instructions that tells a machine what to do. Programmers write these
instructions in a language that people can read, and a compiler translates them into a form the processor
understands. Good programs are easy to read, easy to test, and easy to change.

The two friends argued about the map for almost an hour. One of them was sure that the trail turned
north after the bridge; the other remembered a sign pointing east. In the end they followed the stream,
which was the only thing they both agreed they could trust.

Bees carry pollen from flower to flower, and in doing so they help plants produce seeds and fruit.
A single colony can visit millions of flowers in one season. Without bees, many of the foods we eat
every day would become rare and expensive.

When the concert ended, the audience stood and applauded for several minutes. The conductor bowed,
turned to the orchestra, and asked the musicians to rise. Outside, the snow had started to fall again.
"""


def heldout_text(model: Path, path: str | None) -> tuple[str, str]:
    if path:
        return Path(path).read_text(encoding="utf-8"), path
    if (model / "heldout.txt").is_file():
        return (model / "heldout.txt").read_text(encoding="utf-8"), str(model / "heldout.txt")
    return HELDOUT, "built-in paragraphs (benchmarks/quant_quality.py)"


def windows(ids: list[int], ctx: int) -> list[list[int]]:
    return [ids[i:i + ctx] for i in range(0, len(ids), ctx) if len(ids[i:i + ctx]) > 1]


def evaluate(folder: Path, chunks: list[list[int]]) -> list[torch.Tensor]:
    from runtime import Runtime
    rt = Runtime.from_dir(folder)
    return [rt.prompt_logits(c) for c in chunks]


def metrics(logits: list[torch.Tensor], ref: list[torch.Tensor], chunks: list[list[int]]) -> dict:
    cos, top1, nll, n = [], [], 0.0, 0
    for lg, rf, ids in zip(logits, ref, chunks):
        cos.append(torch.nn.functional.cosine_similarity(lg, rf, dim=-1))
        top1.append((lg.argmax(-1) == rf.argmax(-1)).float())
        logp = torch.log_softmax(lg[:-1].double(), dim=-1)
        nll -= float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
        n += len(ids) - 1
    cos, top1 = torch.cat(cos), torch.cat(top1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "top1": float(top1.mean()),
            "ppl": math.exp(nll / n), "positions": int(cos.numel()), "scored_tokens": n}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "builder" / "assets" / "tiny"), help="HF bf16 checkpoint folder")
    p.add_argument("--heldout", help="held-out text file (default MODEL/heldout.txt, else built-in paragraphs)")
    p.add_argument("--calib-file", help="calibration texts, one per line (default: the built-in set)")
    p.add_argument("--ctx", type=int, default=256, help="tokens per evaluation window")
    p.add_argument("--max-tokens", type=int, default=4096, help="at most this many held-out tokens")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from builder.convert import calibrate_and_convert
    from runtime import Runtime

    model = Path(args.model)
    text, source = heldout_text(model, args.heldout)
    tok = Runtime.from_dir(model).tokenizer
    ids = tok.encode(text, add_special_tokens=False).ids[:args.max_tokens]
    chunks = windows(ids, args.ctx)
    results = {}
    with tempfile.TemporaryDirectory(prefix="quant-quality-") as tmp:
        ref = None
        for name, (to, calibrated, kv) in FORMATS.items():
            t0 = time.perf_counter()
            folder = model
            if to is not None:
                folder = Path(tmp) / name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "")
                calibrate_and_convert(model, folder, to, progress=False, kv_cache=kv,
                                   calibration=(args.calib_file or "default") if calibrated else None)
            logits = evaluate(folder, chunks)
            ref = logits if ref is None else ref
            results[name] = {**metrics(logits, ref, chunks), "seconds": round(time.perf_counter() - t0, 1)}
            print(f"  {name}: done in {results[name]['seconds']} s", file=sys.stderr)
    print(f"model {model} | held-out: {source}, {len(ids)} tokens in {len(chunks)} windows of <= {args.ctx} | "
          f"calibration: {args.calib_file or 'built-in texts'}")
    print("| format | logit cosine vs bf16 (mean / min) | top-1 agreement | held-out ppl |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['cosine_mean']:.5f} / {r['cosine_min']:.4f} | {100 * r['top1']:.1f}% | {r['ppl']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model), "heldout": source, "tokens": len(ids),
                                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
