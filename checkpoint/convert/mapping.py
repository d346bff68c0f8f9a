"""Expand a format's name tables for one model, and the exhaustiveness checks (llama.cpp style).

Nothing is matched by "whatever is left over": a source tensor is either used by a READ rule or listed
in DROPPED, every canonical tensor comes from exactly one rule, and every target tensor from exactly
one WRITE rule. Errors list all missing and unexpected names at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spec.canonical import OPTIONAL, canonical_shapes, present
from checkpoint.errors import CheckpointError
from checkpoint.convert.tables import DENSE_FORMATS, FEATURES, FORMATS
from spec.registry.models import ModelConfig


@dataclass
class Expanded:
    """One format's tables for one model, every `{layer}` filled in."""
    name: str
    shapes: dict[str, tuple[str, tuple[int, ...]]]          # stored name -> (kind, shape)
    read: dict[str, tuple[object, tuple[str, ...]]]         # canonical -> (quirk, source names)
    write: dict[tuple[str, ...], tuple[object, tuple[str, ...]]]  # target names -> (quirk, canonical names)
    dropped: list[re.Pattern]
    features: tuple[str, ...] = ()
    canonical: dict[str, tuple[int, ...]] | None = None     # canonical name -> logical shape

# Rows of experts (and of the MXFP4/NVFP4 blocks along their input dim) need these multiples per layout.
BLOCK_MULTIPLE = {"hf": 1, "hf-fp8": 1, "hf-nvfp4": 16}
DEFAULT_BLOCK_MULTIPLE = 32          # MXFP4 layouts


def _layers(pattern: str, config: ModelConfig):
    return range(config.num_layers) if "{layer}" in pattern else [None]


def _fill(pattern: str, layer) -> str:
    return pattern if layer is None else pattern.format(layer=layer)


def _layer_major(table: dict, config: ModelConfig):
    """(pattern, entry, layer) in file order: globals listed before the per-layer patterns, then layer 0's
    tensors, layer 1's, ..., then the remaining globals. Keeps each layer's tensors together in shards."""
    items = list(table.items())
    first = next((i for i, (p, _) in enumerate(items) if "{layer}" in (p if isinstance(p, str) else p[0])),
                 len(items))
    def key(entry):
        i, (pattern, _), layer = entry
        if layer is not None:
            return (1, layer, i)
        return (0 if i < first else 2, 0, i)
    expanded = [(i, item, layer) for i, item in enumerate(items)
                for layer in _layers(item[0] if isinstance(item[0], str) else item[0][0], config)]
    return [(item[0], item[1], layer) for i, item, layer in sorted(expanded, key=key)]


def expand(fmt: str, config: ModelConfig, features=()) -> Expanded:
    """`fmt`'s tables for this model, with the optional parts named in `features` (tables.FEATURES)."""
    if not config.is_moe and fmt not in DENSE_FORMATS:
        raise CheckpointError(f"model {config.name!r} has a dense MLP, which the {fmt} layout cannot hold (dense "
                              f"checkpoints exist in the {', '.join(DENSE_FORMATS)} layouts only); fix: convert "
                              f"to --to {' or '.join(DENSE_FORMATS)}, or build with --quant bf16 or fp8")
    multiple = BLOCK_MULTIPLE.get(fmt, DEFAULT_BLOCK_MULTIPLE)
    for dim, what in ((config.hidden_size, "hidden_size"), (config.intermediate_size, "intermediate_size")):
        if dim % multiple:
            kind = "NVFP4 experts (blocks of 16)" if multiple == 16 else "MXFP4 experts (blocks of 32)"
            raise CheckpointError(f"{what}={dim} is not a multiple of {multiple}, which {fmt}'s {kind} need; "
                                  f"fix: convert to --to hf (bf16 experts) or hf-fp8 instead")
    table = (FORMATS if config.is_moe else DENSE_FORMATS)[fmt]
    features = tuple(f for f in FEATURES if f in set(features))
    unknown = set(features) - set(table.features or {})
    if unknown:
        raise CheckpointError(f"format {fmt} has no optional part(s) {sorted(unknown)}; fix: calibrated scales "
                              f"exist only in hf-nvfp4 and hf-fp8 checkpoints")
    parts = [table.features[f] for f in features]
    tshapes = {**table.shapes, **{k: v for p in parts for k, v in p.shapes.items()}}
    tread = {**table.read, **{k: v for p in parts for k, v in p.read.items()}}
    twrite = {**table.write, **{k: v for p in parts for k, v in p.write.items()}}
    tshapes, tread, twrite = _without_absent(tshapes, tread, twrite, config)
    shapes = {_fill(p, layer): (kind, tuple(shape(config)))
              for p, (kind, shape), layer in _layer_major(tshapes, config)}
    read = {_fill(p, layer): (quirk, tuple(_fill(s, layer) for s in sources))
            for p, (quirk, *sources), layer in _layer_major(tread, config)}
    write = {}
    for pattern, (quirk, *inputs), layer in _layer_major(twrite, config):
        patterns = pattern if isinstance(pattern, tuple) else (pattern,)
        write[tuple(_fill(p, layer) for p in patterns)] = (quirk, tuple(_fill(s, layer) for s in inputs))
    if config.tie_word_embeddings and fmt.startswith("hf"):
        # A tied HF checkpoint stores only the embedding; the canonical lm_head reads the same matrix.
        shapes.pop("lm_head.weight")
        write.pop(("lm_head.weight",))
        read["lm_head.weight"] = (read["embed.weight"][0], ("model.embed_tokens.weight",))
    dropped = [re.compile(re.escape(p).replace(re.escape("{layer}"), r"\d+") + "$") for p in table.dropped]
    scale_patterns = [p for part in parts for p in part.read]
    # Calibrated scales are canonical float32 scalars, present only with their feature.
    canonical = {**canonical_shapes(config),
                 **{p.format(layer=i): () for i in range(config.num_layers) for p in scale_patterns}}
    ex = Expanded(fmt, shapes, read, write, dropped, features, canonical)
    _check_tables(ex, config)
    return ex


def _without_absent(shapes: dict, read: dict, write: dict, config: ModelConfig):
    """Drop the rules of optional canonical tensors this model does not have (spec.canonical.OPTIONAL: no
    attention biases, no learned sinks), with the stored tensors only they read and the targets only they feed."""
    absent = {p for p in OPTIONAL if not present(p, config)}
    if not absent:
        return shapes, read, write
    read = {k: v for k, v in read.items() if k not in absent}
    used = {s for _, *sources in read.values() for s in sources}
    write = {k: v for k, v in write.items() if not absent & set(v[1:])}
    return {k: v for k, v in shapes.items() if k in used}, read, write


def _check_tables(ex: Expanded, config: ModelConfig) -> None:
    """The tables themselves are consistent (a programming error if not, hence no CheckpointError)."""
    canon = set(ex.canonical)
    if set(ex.read) != canon:
        raise AssertionError(f"{ex.name} READ table: missing {sorted(canon - set(ex.read))}, "
                             f"extra {sorted(set(ex.read) - canon)}")
    used = {s for _, srcs in ex.read.values() for s in srcs}
    if used != set(ex.shapes):
        raise AssertionError(f"{ex.name} READ sources vs SHAPES: {sorted(used ^ set(ex.shapes))}")
    targets = [t for ts in ex.write for t in ts]
    if len(targets) != len(set(targets)) or set(targets) != set(ex.shapes):
        raise AssertionError(f"{ex.name} WRITE targets vs SHAPES: {sorted(set(targets) ^ set(ex.shapes))}")
    inputs = {s for _, ins in ex.write.values() for s in ins}
    if not inputs <= canon:
        raise AssertionError(f"{ex.name} WRITE reads unknown canonical names {sorted(inputs - canon)}")


def _summary(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def check_sources(ex: Expanded, present: dict[str, object], config: ModelConfig, where: str) -> None:
    """Every stored tensor is expected or dropped, every expected one is stored."""
    missing = sorted(n for n in ex.shapes if n not in present)
    extra = sorted(n for n in present if n not in ex.shapes and not any(p.match(n) for p in ex.dropped))
    if not missing and not extra:
        return
    parts = [f"{where}: the {ex.name} checkpoint's tensors disagree with its config"]
    if missing:
        parts.append(f"missing {len(missing)}: {_summary(missing)}")
    if extra:
        parts.append(f"unexpected {len(extra)}: {_summary(extra)}")
    layers = sorted({int(m.group(1)) for n in extra for m in [re.search(r"(?:layers|block)\.(\d+)\.", n)] if m})
    if layers and layers[-1] >= config.num_layers:
        parts.append(f"the config says {config.num_layers} layers but tensors exist for layer {layers[-1]}")
    parts.append("fix: use a complete checkpoint whose config.json matches its weights "
                 "(or re-export it), and make sure all shards are present")
    raise CheckpointError("; ".join(parts))
