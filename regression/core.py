"""Goldens, metrics and threshold checks.

Golden (regression/goldens/<suite>.json), recorded from a bf16 engine with `--record`:
    prompts:  per prompt, its token ids, the greedy output ids and their logprobs
    segments: per held-out segment, its token ids, and per position (teacher-forced) the top-k next-token ids
              with their logprobs and the logprob of the actual next token; the held-out perplexity
    engine:   the recording engine's manifest (model, quant, gpu, source checkpoint sha256, tools)

Metrics of a target against the golden:
    token_agreement       greedy generation, position-wise: equal tokens / max(len(golden), len(target)), pooled
                          over prompts (a sequence that stops early disagrees at every position it lacks)
    top1_agreement        teacher-forced: the target's argmax equals the golden's top-1, over held-out positions
    logit_cosine          teacher-forced: cosine of the golden's top-k logprob vector and the target's logprobs
                          on the same k ids, each centred (mean over the k removed), averaged over positions.
                          Centring makes it a cosine of logits (shift-free): uncentred logprob vectors share a
                          large negative offset that keeps their cosine near 1 whatever the distribution does
                          (reported as info `uncentered_logprob_cosine`)
    ppl_increase          held-out perplexity / the golden's perplexity - 1
    tokenizer_agreement   texts tokenized as in the golden (an engine: equal ids; a server: equal counts)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from regression.suite import Suite

GOLDEN_SCHEMA = 1
GOLDENS_DIR = Path(__file__).resolve().parent / "goldens"
THRESHOLDS_FILE = Path(__file__).resolve().parent / "thresholds.yaml"

# metric -> (threshold key, "min" | "max")
CHECKS = {
    "tokenizer_agreement": ("min_tokenizer_agreement", "min"),
    "token_agreement": ("min_token_agreement", "min"),
    "top1_agreement": ("min_top1_agreement", "min"),
    "logit_cosine": ("min_logit_cosine", "min"),
    "ppl_increase": ("max_ppl_increase", "max"),
}


class GoldenError(ValueError):
    """No usable golden (missing, stale, for another suite). Exit status 2."""


class ThresholdError(ValueError):
    """No thresholds for this quant format, or a malformed thresholds file. Exit status 2."""


# -- goldens -----------------------------------------------------------------------------------------------------
def golden_path(suite: Suite, goldens_dir: str | Path | None = None) -> Path:
    return Path(goldens_dir or GOLDENS_DIR) / f"{suite.name}.json"


def _r(x: float) -> float:
    return float(f"{x:.7g}")


def record_golden(suite: Suite, target, progress=None) -> dict:
    """Run the suite on `target` (an engine directory: token ids are needed) and return the golden."""
    say = progress or (lambda msg: None)
    prompts = []
    for text, g in zip(suite.prompts, target.generate(suite.prompts, suite.max_tokens)):
        prompts.append({"text": text, "prompt_ids": g.prompt_ids, "output_ids": g.output_ids,
                        "logprobs": [_r(x) for x in g.logprobs]})
    say(f"recorded {len(prompts)} greedy generations")
    segments, nll, count = [], 0.0, 0
    for text in suite.segments:
        s = target.score(text)
        ids = np.asarray(s.ids)
        lp = s.logprobs[:-1]                                  # position t predicts token t+1
        top = np.argsort(-lp, axis=-1, kind="stable")[:, :suite.top_k]
        top_lp = np.take_along_axis(lp, top, axis=-1)
        nxt = lp[np.arange(len(ids) - 1), ids[1:]]
        nll -= float(nxt.astype(np.float64).sum())
        count += len(ids) - 1
        segments.append({"ids": ids.tolist(), "topk_ids": top.tolist(),
                         "topk_logprobs": [[_r(v) for v in row] for row in top_lp.tolist()],
                         "next_logprobs": [_r(v) for v in nxt.tolist()]})
    say(f"recorded {len(segments)} held-out segments ({count} positions)")
    info = target.info()
    return {
        "schema_version": GOLDEN_SCHEMA, "suite": suite.name, "model": suite.model,
        "suite_fingerprint": suite.fingerprint(),
        "heldout_file": str(suite.heldout_file) if suite.heldout_file else None,
        "recorded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "engine": info, "top_k": suite.top_k, "max_tokens": suite.max_tokens,
        "prompts": prompts, "segments": segments,
        "perplexity": math.exp(nll / count) if count else None, "positions": count,
    }


def write_golden(golden: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(golden, separators=(",", ":")) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_golden(suite: Suite, goldens_dir=None) -> dict:
    path = golden_path(suite, goldens_dir)
    if not path.is_file():
        raise GoldenError(f"no golden for suite {suite.name!r} at {path}; record one from a bf16 engine: "
                          f"engine-regression BF16_ENGINE_DIR --suite {suite.name} --record"
                          + (f" --goldens {goldens_dir}" if goldens_dir else ""))
    try:
        golden = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise GoldenError(f"{path}: not valid JSON ({e}); re-record it with --record") from None
    if golden.get("schema_version") != GOLDEN_SCHEMA:
        raise GoldenError(f"{path}: golden schema {golden.get('schema_version')!r}, this code reads {GOLDEN_SCHEMA}; "
                          f"re-record it with --record")
    if golden.get("suite_fingerprint") != suite.fingerprint():
        raise GoldenError(f"{path}: the golden was recorded for another version of suite {suite.name!r} (prompts, "
                          f"max_tokens, top_k or held-out text {suite.heldout_file} changed); re-record it with "
                          f"--record from a bf16 engine")
    golden["_path"] = str(path)
    return golden


def check_same_source(golden: dict, info: dict) -> None:
    """An engine built from another checkpoint than the golden's cannot be compared to it."""
    g, t = (golden.get("engine") or {}).get("source_sha256"), info.get("source_sha256")
    if g and t and g != t:
        raise GoldenError(f"{info['target']} was built from another source checkpoint than the golden "
                          f"({golden.get('_path')}, recorded from {golden['engine'].get('target')}); the golden is "
                          f"stale: re-record it from a bf16 engine of this checkpoint with --record")


# -- thresholds --------------------------------------------------------------------------------------------------
def load_thresholds(path: str | Path | None = None) -> dict:
    path = Path(path or THRESHOLDS_FILE)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ThresholdError(f"{path}: cannot read thresholds ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("formats"), dict):
        raise ThresholdError(f"{path}: expected a mapping with a 'formats' section")
    return data


def thresholds_for(data: dict, quant: str | None, suite: str) -> dict:
    if not quant:
        raise ThresholdError("the target does not say its quant format (engine.json 'quant' or the served model's "
                             "engine_quant parameter)")
    fmt = data["formats"].get(quant)
    if fmt is None:
        raise ThresholdError(f"no thresholds for quant format {quant!r}; known: {', '.join(data['formats'])}")
    out = dict(fmt)
    out.update(((data.get("overrides") or {}).get(suite) or {}).get(quant) or {})
    for key, _ in CHECKS.values():
        if key not in out:
            raise ThresholdError(f"thresholds for {quant!r}: missing {key}")
    return out


# -- metrics -----------------------------------------------------------------------------------------------------
@dataclass
class Observation:
    generations: list      # targets.Generation per prompt
    scored: list           # targets.Scored per segment


def observe(suite: Suite, target, progress=None) -> Observation:
    say = progress or (lambda msg: None)
    gens = target.generate(suite.prompts, suite.max_tokens)
    say(f"{target.name}: {len(gens)} greedy generations")
    scored = [target.score(t) for t in suite.segments]
    say(f"{target.name}: {len(scored)} held-out segments scored")
    return Observation(gens, scored)


def compute_metrics(golden: dict, obs: Observation) -> tuple[dict, dict]:
    """-> (metrics checked against thresholds, extra information)."""
    tok_same, tok_total = 0, 0
    agree, denom, prefix, lp_diffs = 0, 0, [], []
    for gp, g in zip(golden["prompts"], obs.generations):
        tok_total += 1
        tok_same += (g.prompt_ids == gp["prompt_ids"]) if g.prompt_ids is not None \
            else (g.n_prompt == len(gp["prompt_ids"]))
        a, b = gp["output_ids"], g.output_ids
        agree += sum(x == y for x, y in zip(a, b))
        denom += max(len(a), len(b))
        p = 0
        while p < min(len(a), len(b)) and a[p] == b[p]:
            p += 1
        prefix.append(p / max(len(a), 1))
        lp_diffs += [abs(x - y) for x, y in zip(gp["logprobs"][:p], g.logprobs[:p])]

    top1, cos, raw_cos, positions = 0, [], [], 0
    nll, count, golden_nll = 0.0, 0, 0.0
    max_lp_diff = 0.0
    for gs, s in zip(golden["segments"], obs.scored):
        tok_total += 1
        ids = gs["ids"]
        tok_same += (s.ids == ids) if s.ids is not None else (s.n == len(ids))
        n = min(len(ids), s.n) - 1            # positions both have (a tokenizer change shortens this)
        if n <= 0:
            continue
        lp = s.logprobs[:n].astype(np.float64)
        top = np.asarray(gs["topk_ids"][:n])
        glp = np.asarray(gs["topk_logprobs"][:n], dtype=np.float64)
        tlp = np.take_along_axis(lp, top, axis=-1)
        top1 += int((lp.argmax(axis=-1) == top[:, 0]).sum())
        cos += _cosine(glp - glp.mean(-1, keepdims=True), tlp - tlp.mean(-1, keepdims=True)).tolist()
        raw_cos += _cosine(glp, tlp).tolist()
        max_lp_diff = max(max_lp_diff, float(np.abs(glp - tlp).max()))
        nxt = np.asarray(ids[1:n + 1])
        nll -= float(lp[np.arange(n), nxt].sum())
        golden_nll -= float(np.sum(gs["next_logprobs"][:n]))
        count += n
        positions += n
    ppl = math.exp(nll / count) if count else float("nan")
    # The golden's perplexity over the same positions (all of them, unless a tokenizer change cut some).
    gppl = math.exp(golden_nll / count) if count else float("nan")
    metrics = {
        "tokenizer_agreement": tok_same / tok_total if tok_total else 1.0,
        "token_agreement": agree / denom if denom else 1.0,
        "top1_agreement": top1 / positions if positions else float("nan"),
        "logit_cosine": float(np.mean(cos)) if cos else float("nan"),
        "ppl_increase": ppl / gppl - 1.0 if count else float("nan"),
    }
    info = {
        "perplexity": ppl, "golden_perplexity": gppl, "positions": positions,
        "generated_tokens": sum(len(g.output_ids) for g in obs.generations),
        "prefix_match": float(np.mean(prefix)) if prefix else None,
        "min_logit_cosine": float(np.min(cos)) if cos else None,
        "uncentered_logprob_cosine": float(np.mean(raw_cos)) if raw_cos else None,
        "max_topk_logprob_diff": max_lp_diff,
        "generated_logprob_mean_abs_diff": float(np.mean(lp_diffs)) if lp_diffs else None,
    }
    return metrics, info


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    # Two constant vectors (all k logprobs equal in both) point the same way.
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


def check(metrics: dict, thresholds: dict) -> list[dict]:
    rows = []
    for metric, (key, op) in CHECKS.items():
        value, limit = metrics[metric], float(thresholds[key])
        ok = (value >= limit) if op == "min" else (value <= limit)
        if isinstance(value, float) and math.isnan(value):
            ok = False
        rows.append({"metric": metric, "value": value, "threshold": limit, "op": ">=" if op == "min" else "<=",
                     "pass": bool(ok)})
    return rows
