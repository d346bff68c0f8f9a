"""The reference runtime's public API: load an engine directory or any checkpoint folder, and generate.

    from runtime import Runtime, SamplingParams
    rt = Runtime.from_dir("path/to/engine-or-checkpoint")            # float32 on CPU by default
    [res] = rt.generate([[1, 2, 3]], SamplingParams(max_tokens=8))  # res.output_ids, res.finish_reason
    logits = rt.prompt_logits([1, 2, 3])                             # float32 [3, vocab]

A directory is read as: `network.json` if present (the engine's declared network, validated), else the
network derived from the checkpoint (spec.network.network_from_checkpoint); weights through
checkpoint.convert.load_canonical (HF bf16/fp32, HF MXFP4, OpenAI original); `tokenizer.json` if present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch

from spec.manifest import is_engine_dir
from spec.network import NETWORK_FILE, Network, load_network, network_from_checkpoint
from runtime.generate import GenerationResult, TokenEvent, generate, generate_stream
from runtime.kv_cache import kv_cache_bytes
from runtime.model import ReferenceModel
from runtime.sampling import SamplingParams

TOKENIZER_FILE = "tokenizer.json"
# Where an engine directory may keep its HF-layout checkpoint, if not at its top level.
CHECKPOINT_SUBDIRS = ("checkpoint", "weights", "hf")


class RuntimeLoadError(ValueError):
    pass


def check_manifest(path: Path) -> None:
    """An engine directory whose manifest or network this code cannot read (another schema_version, a broken
    file, a value outside spec.bounds' ranges) is refused by every executor; a plain checkpoint folder has none
    and passes."""
    if is_engine_dir(path):
        from spec.engine_values import ENGINE_ERRORS, read_engine
        try:
            read_engine(path)
        except ENGINE_ERRORS as e:
            raise RuntimeLoadError(str(e)) from None


def find_checkpoint(path: Path) -> Path:
    """Where an engine (or a folder given as one) keeps its checkpoint: config.json + safetensors."""
    if (path / "config.json").is_file():
        return path
    for sub in CHECKPOINT_SUBDIRS:
        if (path / sub / "config.json").is_file():
            return path / sub
    raise RuntimeLoadError(f"{path}: no checkpoint found (no config.json here or in {', '.join(CHECKPOINT_SUBDIRS)}/); "
                           f"pass an engine directory or a checkpoint folder")


def load_tokenizer(*folders: Path):
    for folder in folders:
        f = folder / TOKENIZER_FILE
        if f.is_file():
            from tokenizers import Tokenizer
            return Tokenizer.from_file(str(f))
    return None


class Runtime:
    """Generation over an executor: the reference model by default, or any runtime.executors.Executor."""

    def __init__(self, network: Network, tensors: Mapping[str, object] | None, tokenizer=None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", source: str = "",
                 executor=None):
        self.network = network
        self.model = executor if executor is not None else ReferenceModel(network, tensors, dtype=dtype,
                                                                          device=device)
        self.tokenizer = tokenizer
        self.source = source
        self.executor_choice = None       # runtime.executors.load_runtime: the ExecutorChoice that made it

    @classmethod
    def from_dir(cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 network: Network | None = None) -> "Runtime":
        """An engine directory (network.json + checkpoint) or any checkpoint folder load_canonical reads."""
        from checkpoint.convert import load_canonical
        path = Path(path)
        if not path.is_dir():
            raise RuntimeLoadError(f"{path}: not a directory")
        check_manifest(path)
        ckpt_dir = find_checkpoint(path)
        with load_canonical(ckpt_dir) as ck:
            if network is None:
                net_file = path / NETWORK_FILE
                network = load_network(net_file) if net_file.is_file() else network_from_checkpoint(ck)
            _check_agrees(network, ck.config, path)
            tensors = {name: ck.get(name) for name in ck.names()}
        return cls(network, tensors, load_tokenizer(path, ckpt_dir), dtype=dtype, device=device, source=str(path))

    # -- generation ---------------------------------------------------------------------------------------
    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return tuple(self.network.eos_token_ids)

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[GenerationResult]:
        """A batch of token-id prompts (any lengths) -> one GenerationResult per prompt, in order."""
        return generate(self.model, prompts, params)

    def generate_stream(self, prompts: Sequence[Sequence[int]],
                        params: SamplingParams | Sequence[SamplingParams] | None = None,
                        results: list[GenerationResult] | None = None) -> Iterator[TokenEvent]:
        """TokenEvents as they are produced (stop iterating to cancel); `results` collects the full results."""
        return generate_stream(self.model, prompts, params, results)

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """float32 logits [len(ids), vocab] of every position of one sequence (one prefill, no sampling)."""
        ids = torch.tensor([list(ids)], dtype=torch.long)
        cache = self.model.new_cache(1, capacity=ids.shape[1])
        return self.model.forward(ids, torch.arange(ids.shape[1])[None], cache, logits="all")[0]

    # -- text ---------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise RuntimeLoadError(f"{self.source}: no {TOKENIZER_FILE}, so text prompts cannot be encoded; "
                                   f"pass token ids instead")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            raise RuntimeLoadError(f"{self.source}: no {TOKENIZER_FILE}, so ids cannot be decoded")
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def kv_cache_bytes(self, context: int, batch_size: int = 1, kv_dtype: str = "bf16") -> int:
        return kv_cache_bytes(self.network, context, batch_size, kv_dtype)


def _check_agrees(net: Network, config, where: Path) -> None:
    """network.json and the checkpoint must describe the same architecture."""
    pairs = {"vocab_size": (net.vocab_size, config.vocab_size),
             "hidden_size": (net.hidden_size, config.hidden_size),
             "num_layers": (net.num_layers, config.num_layers)}
    a = net.layers[0].attention
    pairs.update({"num_q_heads": (a.num_q_heads, config.num_q_heads), "num_kv_heads": (a.num_kv_heads, config.num_kv_heads),
                  "head_dim": (a.head_dim, config.head_dim)})
    bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if bad:
        raise RuntimeLoadError(f"{where}: {NETWORK_FILE} disagrees with the checkpoint config: " +
                               ", ".join(f"{k} network={v[0]} checkpoint={v[1]}" for k, v in bad.items()))
