"""report.json, report.md (metric, value, threshold, pass/fail per engine) and report.png (each metric per
engine against its threshold) for one engine-regression run, however many targets it had."""

from __future__ import annotations

import json
import math
from pathlib import Path

from regression.core import CHECKS

LABELS = {"tokenizer_agreement": "tokenizer agreement", "token_agreement": "greedy token agreement",
          "top1_agreement": "top-1 agreement (teacher-forced)", "logit_cosine": "logit cosine (centred logprobs, golden top-k)",
          "ppl_increase": "perplexity increase over bf16 golden"}


def _fmt(metric: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if metric == "ppl_increase":
        return f"{v * 100:+.3f}%"
    if metric == "logit_cosine":
        return f"{v:.6f}"
    return f"{v:.4f}"


def _json_safe(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def short_name(result: dict) -> str:
    t = result["target"]
    q = result.get("quant") or "?"
    return f"{q} ({Path(t).name if result['kind'] == 'engine' else t})"


def write_report(report: dict, out: str | Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    paths["json"].write_text(json.dumps(_json_safe(report), indent=1) + "\n", encoding="utf-8")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        # The numbers are in report.json and report.md; only the picture needs matplotlib.
        paths["png"] = None
        note = ("plot skipped: matplotlib is not installed in this environment "
                "(`python -m pip install matplotlib`, or reinstall the project: it is a dependency)")
        paths["md"].write_text(markdown(report).replace("![metrics against thresholds](report.png)", f"_{note}_"),
                               encoding="utf-8")
        paths["note"] = note
        return paths
    paths["md"].write_text(markdown(report), encoding="utf-8")
    plot(report, paths["png"])
    return paths


def markdown(report: dict) -> str:
    g = report["golden"]
    lines = [f"# engine-regression: suite `{report['suite']}`", "",
             f"**{'PASS' if report['passed'] else 'REGRESSION'}** - {len(report['results'])} target(s); golden "
             f"`{g['path']}` recorded {g.get('recorded_at')} from `{(g.get('engine') or {}).get('target')}` "
             f"(quant {(g.get('engine') or {}).get('quant')}), held-out perplexity {g.get('perplexity'):.4f}; "
             f"thresholds `{report['thresholds_file']}`.", "",
             "| engine | quant | metric | value | threshold | result |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        for c in r["checks"]:
            thr = (f"{c['op']} {c['threshold'] * 100:+.3f}%" if c["metric"] == "ppl_increase"
                   else f"{c['op']} {_fmt(c['metric'], c['threshold'])}")
            lines.append(f"| `{r['target']}` | {r.get('quant')} | {LABELS[c['metric']]} | "
                         f"{_fmt(c['metric'], c['value'])} | {thr} | {'pass' if c['pass'] else '**FAIL**'} |")
    lines += ["", "| engine | held-out perplexity | golden perplexity | greedy prefix match | min cosine | "
              "max top-k logprob diff | seconds |", "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        i = r["info"]
        pm = "n/a" if i.get("prefix_match") is None else f"{i['prefix_match']:.3f}"
        mc = "n/a" if i.get("min_logit_cosine") is None else f"{i['min_logit_cosine']:.6f}"
        lines.append(f"| `{r['target']}` | {i['perplexity']:.4f} | {i['golden_perplexity']:.4f} | {pm} | {mc} | "
                     f"{i['max_topk_logprob_diff']:.4g} | {r['seconds']:.1f} |")
    lines += ["", "![metrics against thresholds](report.png)", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    metrics = [m for m in CHECKS if m != "tokenizer_agreement"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2))
    names = [short_name(r) for r in results]
    x = list(range(len(results)))
    for ax, metric in zip(axes, metrics):
        vals, thrs, colors = [], [], []
        for r in results:
            c = next(c for c in r["checks"] if c["metric"] == metric)
            v = c["value"]
            v = float("nan") if v is None else v
            if metric == "logit_cosine":          # plot 1 - cosine on a log scale: the interesting part is tiny
                v, t = max(1.0 - v, 1e-9), max(1.0 - c["threshold"], 1e-9)
            elif metric == "ppl_increase":
                v, t = v * 100.0, c["threshold"] * 100.0
            else:
                t = c["threshold"]
            vals.append(v)
            thrs.append(t)
            colors.append("tab:green" if c["pass"] else "tab:red")
        bars = ax.bar(x, vals, color=colors, width=0.6)
        for b, v, r in zip(bars, vals, results):
            shown = _fmt(metric, next(c for c in r["checks"] if c["metric"] == metric)["value"])
            if not (isinstance(v, float) and math.isnan(v)):
                ax.annotate(shown, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
        for xi, t in zip(x, thrs):
            ax.hlines(t, xi - 0.4, xi + 0.4, colors="black", linestyles="--", linewidth=1.5)
        if metric == "logit_cosine":
            ax.set_yscale("log")
            ax.set_title("1 - logit cosine (lower is better)", fontsize=10)
        elif metric == "ppl_increase":
            ax.set_title("perplexity increase, % (lower is better)", fontsize=10)
            ax.axhline(0, color="gray", linewidth=0.5)
        else:
            ax.set_title(LABELS[metric] + " (higher is better)", fontsize=10)
            ax.set_ylim(0, 1.05)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.suptitle(f"engine-regression, suite {report['suite']}: bars = value (green pass, red fail), "
                 f"dashes = threshold", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
