"""Calibration: run the reference runtime over texts and record the amax of every quantizable linear's
input and of every layer's K and V, for the static scales of W4A4 NVFP4 / W8A8 FP8 and the FP8 KV cache.

What is recorded (as ModelOpt's max calibration does, with quantization off while calibrating):
- `<module>.input_scale` names (spec.canonical.input_scale_name) -> max |x| entering that linear:
  attn.qkv (once for q, k and v: one input), attn.out, and per MoE projection over *all experts*: gate and
  up see every token (each is routed to some expert), down sees the SwiGLU output of every (token, routed
  expert) pair -- one scalar per projection, because the fused MoE GEMM takes one input scale;
- `<qkv module>.k_scale` / `.v_scale` names -> max |K| (after RoPE, what the cache stores) and max |V|.
The caller turns amax into scales (checkpoint.quant_policy: input_scale, kv_scale).

Memory stays bounded by one layer, not by the model: calibrate() runs run_streaming, which carries every
text's hidden states from layer to layer and reads each layer's weights from the checkpoint only while that
layer runs (a MoE layer's experts a slice at a time); texts are truncated to max_tokens, logits never
computed, and only the running maxima are kept. run() (the whole model loaded, one text through every
layer at a time) is its oracle: the same float operations in the same order, so the same maxima bit for bit. The hook points are the runtime's own: the activation-quantizer slots of its
prepared linears and MoE (plugins.reference: act_quant, act_in, act_mid), and KVCache.update.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from checkpoint.calibration import Calibration, CalibrationError
from checkpoint.errors import CheckpointError
from spec.canonical import input_scale_name

# The built-in calibration set: varied English prose (narrative, technical, dialogue, lists, numbers,
# code-like text), written for this project. Enough to exercise every expert of a small model; for
# production quantization pass --calib-file with a few hundred texts from the target domain.
DEFAULT_TEXTS = (
    "The river had frozen early that year, and the children walked across it to school every morning.",
    "To install the package, run the installer, accept the license, and restart the computer when asked.",
    "She opened the letter slowly, as if the words inside might change if she moved too fast.",
    "Photosynthesis converts light energy into chemical energy stored in sugars such as glucose.",
    "The committee will meet on Tuesday at 3 p.m. to review the budget for the next fiscal year.",
    "\"Where are you going?\" he asked. \"Home,\" she said, \"before the storm gets any worse.\"",
    "A prime number has exactly two divisors: one and itself. The first few are 2, 3, 5, 7, 11 and 13.",
    "In 1969, two astronauts walked on the Moon while a third orbited above in the command module.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5",
    "The recipe calls for two cups of flour, one egg, a pinch of salt, and half a cup of warm milk.",
    "Markets fell sharply on Monday after the central bank raised interest rates by half a point.",
    "The old lighthouse keeper counted the ships each night and wrote their names in a leather book.",
    "Water boils at 100 degrees Celsius at sea level, but at lower temperatures on high mountains.",
    "Please remember to lock the door, water the plants, and feed the cat while we are away.",
    "The algorithm sorts the list by repeatedly swapping adjacent elements that are out of order.",
    "Thunder rolled over the hills, and the first heavy drops of rain darkened the dusty road.",
    "Our team shipped the new release on Friday; the changelog lists forty bug fixes and two features.",
    "Mount Everest, at 8,849 meters, is the highest mountain above sea level on Earth.",
    "He practiced the piano every evening, playing the same difficult passage until it sounded easy.",
    "The library is open from nine to five on weekdays and from ten to two on Saturdays.",
    "Vaccines train the immune system to recognize a pathogen without causing the disease itself.",
    "Q: What is the capital of France?\nA: Paris is the capital and largest city of France.",
    "The contract shall remain in force for three years unless terminated earlier by either party.",
    "Seagulls circled above the harbor while fishermen unloaded crates of silver fish onto the dock.",
    "1. Preheat the oven. 2. Mix the dry ingredients. 3. Add the wet ingredients. 4. Bake for 30 minutes.",
    "Light travels about 300,000 kilometers per second, so sunlight takes roughly eight minutes to reach us.",
    "The detective noticed a small scratch on the window frame that nobody else had seen.",
    "Renewable energy sources such as wind and solar power now supply a growing share of electricity.",
    "Dear Ms. Lopez, thank you for your application. We would like to invite you for an interview.",
    "The function returns an error if the input is empty, negative, or larger than the buffer size.",
    "Autumn leaves drifted across the park, red and gold against the gray afternoon sky.",
    "Elephants can recognize themselves in a mirror, a sign of self-awareness found in few animals.",
    "After years of saving, they finally bought a small house with a garden and an apple tree.",
    "The server logs showed a spike in requests at midnight, followed by a series of timeouts.",
    "Shakespeare wrote comedies, tragedies and histories, and many of his phrases are still in use.",
    "If x + 3 = 10, then x = 7; if 2y = 14, then y = 7 as well.",
    "The train to the coast leaves every hour, and the journey takes about two and a half hours.",
    "Good morning! Today we will learn how to write a short story with a clear beginning, middle and end.",
    "Glaciers carve deep valleys as they move, leaving behind lakes, ridges and scattered boulders.",
    "The museum's new exhibit features paintings, sculptures and photographs from five continents.",
)
DEFAULT_MAX_TOKENS = 512
# How many bytes of one MoE layer's dequantized experts streaming calibration holds at once (20b: 100 MB
# per expert in float32, so ~10 experts; a whole 120b layer would be 12.7 GB).
EXPERT_BYTES = 1 << 30


def load_texts(calibration) -> list[str]:
    """"default" -> DEFAULT_TEXTS; a path -> its non-empty lines (one text per line)."""
    if calibration == "default":
        return list(DEFAULT_TEXTS)
    path = Path(calibration)
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist; fix: pass --calib-file with a UTF-8 text "
                               f"file, one calibration text per line (or use the built-in set)")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise CalibrationError(f"calibration file {path} is not UTF-8 text ({e}); fix: re-save it as UTF-8") from None
    texts = [t for t in lines if t]
    if not texts:
        raise CalibrationError(f"calibration file {path} has no non-empty lines; fix: one text per line")
    return texts


def _recorder(cal: Calibration, name: str):
    def record(x: torch.Tensor) -> torch.Tensor:
        cal.record(cal.amax, name, x)
        return x
    return record


def instrument(model, cal: Calibration) -> None:
    """Point every linear's activation-quantizer slot at an amax recorder (quantization off)."""
    for (_, attn, _, mlp), layer in zip(model.layers, model.network.layers):
        _instrument_layer(attn, mlp, layer, cal)


def _kv_names(network) -> list[tuple[str, str]]:
    return [(layer.attention.qkv.weight.removesuffix(".weight") + ".k_scale",
             layer.attention.qkv.weight.removesuffix(".weight") + ".v_scale") for layer in network.layers]


def run(model, tokenizer, texts: list[str], max_tokens: int = DEFAULT_MAX_TOKENS, progress: bool = True) -> Calibration:
    """Calibrate an already loaded runtime.model.ReferenceModel on `texts` (tokenized with `tokenizer`), the
    whole model in memory, one text through all layers at a time (run_streaming computes the same maxima
    holding one layer; this is its oracle)."""
    from tqdm import tqdm
    cal = Calibration()
    instrument(model, cal)
    names = _kv_names(model.network)
    with tqdm(texts, desc="calibrating", unit="text", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for text in bar:
            ids = tokenizer.encode(text, add_special_tokens=False).ids[:max_tokens]
            if not ids:
                continue
            if max(ids) >= model.network.vocab_size:
                raise CalibrationError(f"calibration: the tokenizer produced token id {max(ids)}, beyond the model's "
                                       f"vocab_size {model.network.vocab_size}; fix: use the tokenizer.json that "
                                       f"belongs to this model")
            cache = _recording_cache(model, cal, names, len(ids))
            ids_t = torch.tensor([ids], dtype=torch.long)
            model.forward(ids_t, torch.arange(len(ids))[None], cache, logits="none")
            cal.texts += 1
            cal.tokens += len(ids)
            bar.set_postfix_str(f"{cal.tokens} tokens", refresh=False)
    if not cal.tokens:
        raise CalibrationError("calibration: every text tokenized to nothing; fix: pass texts with content")
    return cal


class _CheckpointView(Mapping):
    """A canonical checkpoint as the read-on-access Mapping runtime.model takes: a value is read from the
    shards' mmap when a layer is built and freed with it; `rows` reads only experts [a, b) of each tensor."""

    def __init__(self, ck, rows: slice | None = None):
        self.ck, self.rows, self._names = ck, rows, set(ck.names())

    def __getitem__(self, name):
        if name not in self._names:
            raise KeyError(name)
        return self.ck.get(name) if self.rows is None else self.ck.get(name, rows=self.rows)

    def __contains__(self, name):
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


def _expert_slices(m, dtype: torch.dtype, budget: int) -> list[slice]:
    """Consecutive expert ranges whose dequantized gate, up and down weights fit `budget` bytes (at least one
    expert each): a 120b layer's 128 experts are 12.7 GB in float32."""
    per_expert = (2 * m.gate.out_features * m.gate.in_features + m.down.out_features * m.down.in_features) * \
        torch.empty((), dtype=dtype).element_size()
    step = max(1, min(m.num_experts, budget // max(1, per_expert)))
    return [slice(a, min(a + step, m.num_experts)) for a in range(0, m.num_experts, step)]


@torch.inference_mode()
def run_streaming(ck, network, tokenizer, texts: list[str], max_tokens: int = DEFAULT_MAX_TOKENS,
                  progress: bool = True, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  expert_bytes: int = EXPERT_BYTES) -> Calibration:
    """run()'s maxima, bit for bit, holding one layer at a time: every text's hidden states [1, T, H] are
    carried from layer to layer, each layer's weights are read from the checkpoint `ck` (load_canonical)
    when it runs and freed after, and a MoE layer's experts are dequantized `expert_bytes` at a time.
    Every float operation is the one ReferenceModel.forward does for that text, on the same tensors and in
    the same order (attention per text with its own cache; the experts of a text in ascending order via
    plugins.reference.moe.run_experts), so amax values are equal, not just close. (Batching the texts'
    tokens into one GEMM per expert would be faster but changes float rounding: BLAS kernels differ by M.)
    """
    from tqdm import tqdm
    from plugins.reference.moe import route, run_experts
    from plugins.reference.norm import rms_norm
    from spec.network import MoE
    from runtime.model import ReferenceModel
    model = ReferenceModel.layer_by_layer(network, _CheckpointView(ck), dtype=dtype, device=device)
    cal = Calibration()
    names = _kv_names(network)
    seqs = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids[:max_tokens]
        if not ids:
            continue
        if max(ids) >= network.vocab_size:
            raise CalibrationError(f"calibration: the tokenizer produced token id {max(ids)}, beyond the model's "
                                   f"vocab_size {network.vocab_size}; fix: use the tokenizer.json that "
                                   f"belongs to this model")
        seqs.append(ids)
    if not seqs:
        raise CalibrationError("calibration: every text tokenized to nothing; fix: pass texts with content")
    # The embedding rows the texts use, read one row at a time (bf16 -> dtype per row is the same value as
    # converting the whole table first).
    emb = network.embedding.weight
    rows = {t: ck.get(emb, rows=slice(t, t + 1)).to(model.device, dtype) for t in sorted({t for s in seqs for t in s})}
    xs = [torch.cat([rows[t] for t in ids])[None] for ids in seqs]            # [1, T, H] per text
    del rows
    positions = [torch.arange(len(ids), device=model.device)[None] for ids in seqs]
    with tqdm(total=len(network.layers), desc="calibrating", unit="layer", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        for i, spec in enumerate(network.layers):
            attn_norm, attn, mlp_norm, mlp = model.load_layer(i, experts=False)
            _instrument_layer(attn, mlp, spec, cal)
            hs = []
            for t, x in enumerate(xs):
                T = x.shape[1]
                cache = _recording_cache(model, cal, names, T)
                plan = cache.begin(positions[t], 0)
                rope = model._rope(attn.spec.rope, positions[t])
                x = x + model._attention(rms_norm(x, attn_norm, model.eps[i][0]), attn, rope, cache, plan, i)
                xs[t] = x
                hs.append(rms_norm(x, mlp_norm, model.eps[i][1]).view(T, -1))
            del attn
            m = mlp.spec
            if isinstance(m, MoE):
                routed = [route(h, mlp.router.weight, mlp.router.bias, m.top_k) for h in hs]
                xq = [mlp.act_in(h) for h in hs]                      # records the gate/up input amax
                outs = [torch.zeros_like(h) for h in hs]
                for part in _expert_slices(m, dtype, expert_bytes):
                    wgu, bgu, wd, bd = model.expert_weights(m, _CheckpointView(ck, part), part.stop - part.start)
                    for t, (weights, idx) in enumerate(routed):
                        run_experts(outs[t], xq[t], weights, idx, wgu, bgu, wd, bd, m.swiglu_alpha,
                                    m.swiglu_limit, mlp.act_mid, first=part.start)
                    del wgu, bgu, wd, bd
            else:
                from plugins.reference.moe import dense_mlp
                outs = [dense_mlp(h, mlp.w_gate_up, mlp.b_gate_up, mlp.w_down, mlp.b_down, m.swiglu_alpha,
                                  m.swiglu_limit, act_quant_in=mlp.act_in, act_quant_mid=mlp.act_mid) for h in hs]
            for t, o in enumerate(outs):
                xs[t] = xs[t] + o.view(xs[t].shape)
            del mlp, hs, outs
            bar.update(1)
    cal.texts = len(seqs)
    cal.tokens = sum(len(s) for s in seqs)
    return cal


def _recording_cache(model, cal, names, capacity: int):
    """A one-row KV cache whose updates also record the K and V maxima (the KV-cache scales)."""
    cache = model.new_cache(1, capacity=capacity)
    update = cache.update

    def recording_update(layer, k, v):
        cal.record(cal.kv_amax, names[layer][0], k)
        cal.record(cal.kv_amax, names[layer][1], v)
        return update(layer, k, v)
    cache.update = recording_update
    return cache


def _instrument_layer(attn, mlp, spec, cal: Calibration) -> None:
    """instrument() for one layer's weights (what load_layer returned)."""
    a = spec.attention
    attn.qkv.act_quant = _recorder(cal, input_scale_name(a.qkv.weight))
    attn.out.act_quant = _recorder(cal, input_scale_name(a.out.weight))
    m = spec.mlp
    gate_up = _recorder(cal, input_scale_name(m.gate.weight))
    up_name = input_scale_name(m.up.weight)

    def both(x):                                           # gate and up read the same input
        cal.record(cal.amax, up_name, x)
        return gate_up(x)
    mlp.act_in = both
    mlp.act_mid = _recorder(cal, input_scale_name(m.down.weight))


def calibrate(src, calibration="default", *, max_tokens: int = DEFAULT_MAX_TOKENS, progress: bool = True,
              dtype: torch.dtype = torch.float32, device: str = "cpu", expert_bytes: int = EXPERT_BYTES) -> Calibration:
    """Calibrate checkpoint folder `src` (as it is: bf16, MXFP4, ...; activations never quantized while
    calibrating) on `calibration` ("default" or a text file), layer by layer (run_streaming): peak memory
    is one layer's dequantized weights (a MoE layer's experts `expert_bytes` at a time) plus the texts'
    hidden states, whatever the depth. `dtype` / `device` are the reference runtime's ("cuda" on a GPU
    build box: each layer is moved there as it runs)."""
    from checkpoint.convert import load_canonical
    from runtime.api import RuntimeLoadError, find_checkpoint, load_tokenizer
    from spec.network import network_from_checkpoint
    texts = load_texts(calibration)
    src = Path(src)
    try:
        ckpt_dir = find_checkpoint(src)
        tokenizer = load_tokenizer(src, ckpt_dir)
        if tokenizer is None:
            raise CalibrationError(f"{src}: calibration needs the model's tokenizer.json next to its config.json; "
                                   f"fix: copy tokenizer.json into {src}, or write weight-only (no calibration)")
        with load_canonical(ckpt_dir) as ck:
            network = network_from_checkpoint(ck)
            return run_streaming(ck, network, tokenizer, texts, max_tokens=max_tokens, progress=progress,
                                 dtype=dtype, device=device, expert_bytes=expert_bytes)
    except (RuntimeLoadError, CheckpointError) as e:
        if isinstance(e, CalibrationError):
            raise
        raise CalibrationError(f"calibration could not load {src} in the reference runtime: {e}") from None
