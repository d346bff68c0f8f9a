"""Tokenizers for serving: o200k_harmony (tiktoken, offline) for the released models, the engine's own
`tokenizer.json` (HF `tokenizers`) otherwise. Both expose the same small interface (`ServingTokenizer`).

Offline o200k: tiktoken and openai-harmony download `o200k_base.tiktoken` at run time. `ensure_o200k()` takes it
from the `bpe-openai` wheel (bpe_openai/data/o200k_base.tiktoken.gz), checks the sha256 tiktoken pins, and places
it in a cache folder we own (checkpoint.fsutil.cache_dir()/tiktoken: $GPTOSS_TRT_CACHE, else
$XDG_CACHE_HOME/gptoss-trt, else ~/.cache/gptoss-trt) under both names the two
libraries look for: `<sha1 of the download url>` (tiktoken, TIKTOKEN_CACHE_DIR) and `o200k_base.tiktoken`
(openai-harmony, TIKTOKEN_ENCODINGS_BASE). Call it before importing either library's encodings.
"""

from __future__ import annotations

import abc

import gzip
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Sequence

from checkpoint.fsutil import cache_dir

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_HARMONY_VOCAB = 201088
HARMONY_SPECIAL_TOKENS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>",
                          "<|constrain|>")
# The stop tokens of an assistant turn (openai-harmony stop_tokens_for_assistant_actions).
HARMONY_STOP_TOKENS = ("<|return|>", "<|call|>")

_lock = threading.Lock()


class TokenizerError(RuntimeError):
    pass


# engine.json's `tokenizer` for an engine built from a checkpoint without one: it runs with token ids
# (run-engine --input-ids) and its Triton repository serves them through `tensorrt_llm` alone.
NO_TOKENIZER = "none"


def tiktoken_dir() -> Path:
    return cache_dir() / "tiktoken"


def _has_valid(path: Path) -> bool:
    try:
        return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == O200K_SHA256
    except OSError:
        return False


def ensure_o200k() -> Path:
    """Place the verified o200k_base vocabulary in our cache folder and point tiktoken and openai-harmony at it.
    Returns the folder. Raises TokenizerError when the vocabulary cannot be found or its hash is wrong."""
    with _lock:
        d = tiktoken_dir()
        key = hashlib.sha1(O200K_URL.encode()).hexdigest()
        harmony_file, tiktoken_file = d / "o200k_base.tiktoken", d / key
        if not (_has_valid(harmony_file) and _has_valid(tiktoken_file)):
            try:
                import bpe_openai
            except ImportError:
                raise TokenizerError("o200k_harmony needs its vocabulary offline: pip install bpe-openai "
                                     "(it ships o200k_base.tiktoken.gz)") from None
            gz = Path(bpe_openai.__file__).parent / "data" / "o200k_base.tiktoken.gz"
            if not gz.is_file():
                raise TokenizerError(f"{gz}: missing from the bpe-openai wheel")
            data = gzip.decompress(gz.read_bytes())
            digest = hashlib.sha256(data).hexdigest()
            if digest != O200K_SHA256:
                raise TokenizerError(f"{gz}: sha256 {digest} is not the o200k_base hash tiktoken pins ({O200K_SHA256})")
            d.mkdir(parents=True, exist_ok=True)
            for target in (harmony_file, tiktoken_file):
                tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
        # Only override a user's setting when it does not already hold the vocabulary.
        user_tk = os.environ.get("TIKTOKEN_CACHE_DIR")
        if not (user_tk and _has_valid(Path(user_tk) / key)):
            os.environ["TIKTOKEN_CACHE_DIR"] = str(d)
        user_h = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
        if not (user_h and _has_valid(Path(user_h) / "o200k_base.tiktoken")):
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(d)
        return d


# ----------------------------------------------------------------------------------------------------------
class ServingTokenizer(abc.ABC):
    """encode(text) -> ids (special-token strings in text become special tokens); token_bytes(id) -> the bytes
    of one token (special tokens: their text); special_id(name) -> id or None."""

    kind: str = ""
    vocab_size: int = 0

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        ...

    @abc.abstractmethod
    def encode_plain(self, text: str) -> list[int]:
        """text -> ids with every special-token string in it encoded as ordinary text."""

    @abc.abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        ...

    @abc.abstractmethod
    def special_id(self, text: str) -> int | None:
        ...

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def harmony_ids(self) -> dict[str, int]:
        """The Harmony special tokens this vocabulary has, name -> id."""
        out = {}
        for t in HARMONY_SPECIAL_TOKENS:
            i = self.special_id(t)
            if i is not None:
                out[t] = i
        return out

    def stop_ids(self) -> list[int]:
        return [i for t in HARMONY_STOP_TOKENS if (i := self.special_id(t)) is not None]


class O200kHarmonyTokenizer(ServingTokenizer):
    kind = "o200k_harmony"

    def __init__(self):
        ensure_o200k()
        import tiktoken
        self.enc = tiktoken.get_encoding("o200k_harmony")
        self.vocab_size = self.enc.n_vocab
        self._special = dict(self.enc._special_tokens)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special="all")

    def encode_plain(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self.enc.decode_single_token_bytes(token_id)

    def special_id(self, text: str) -> int | None:
        return self._special.get(text)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-unicode table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class HFTokenizer(ServingTokenizer):
    """A `tokenizer.json` (HF tokenizers). Byte-level vocabularies give exact per-token bytes; others fall back to
    decoding each token alone."""
    kind = "tokenizer.json"

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer
        self.path = Path(path)
        try:
            self.tok = Tokenizer.from_file(str(self.path))
            spec = json.loads(self.path.read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception; JSON, OS and decode errors
            raise TokenizerError(f"{self.path}: not a tokenizer.json the tokenizers library reads ({str(e)[:200]}); "
                                 f"copy the model's tokenizer.json into the engine directory") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self._added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        self._added_by_id = {i: c for c, i in self._added.items()}
        decoder = spec.get("decoder") or {}
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", []) or []}
        self._byte_level = "ByteLevel" in kinds
        self._byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        self._cache: dict[int, bytes] = {}
        self._plain = None

    def encode(self, text: str) -> list[int]:
        # encode_batch releases the GIL while it works (encode holds it: 2 MB of text stalled every other thread of
        # the OpenAI endpoint for about 2 s); same ids.
        return self.tok.encode_batch([text], add_special_tokens=False)[0].ids

    def encode_plain(self, text: str) -> list[int]:
        if self._plain is None:
            from tokenizers import Tokenizer
            plain = Tokenizer.from_file(str(self.path))
            plain.encode_special_tokens = True       # special added tokens in the text are split like any text
            self._plain = plain
        ids = self._plain.encode_batch([text], add_special_tokens=False)[0].ids   # GIL released
        # Added tokens not marked special are still matched whole; no user text may produce a Harmony control token.
        control = {i for t, i in self._added.items() if t in HARMONY_SPECIAL_TOKENS}
        if control.intersection(ids):
            raise TokenizerError(f"{self.path}: its Harmony tokens are not all marked special, so text cannot be "
                                 f"kept apart from them; fix: set \"special\": true on them in added_tokens")
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        b = self._cache.get(token_id)
        if b is not None:
            return b
        if token_id in self._added_by_id:
            b = self._added_by_id[token_id].encode()
        else:
            piece = self.tok.id_to_token(token_id)
            if piece is None:
                raise TokenizerError(f"token id {token_id} is outside this tokenizer's vocabulary ({self.vocab_size})")
            if self._byte_level and all(c in self._byte_decoder for c in piece):
                b = bytes(self._byte_decoder[c] for c in piece)
            else:
                b = self.tok.decode([token_id], skip_special_tokens=False).encode()
        self._cache[token_id] = b
        return b

    def special_id(self, text: str) -> int | None:
        return self._added.get(text)


def load_tokenizer(engine_dir: str | Path | None, kind: str = "auto") -> ServingTokenizer:
    """kind: "o200k_harmony", "tokenizer.json", or "auto" (see choose_tokenizer)."""
    engine_dir = Path(engine_dir) if engine_dir is not None else None
    if kind == "auto":
        kind = choose_tokenizer(engine_dir)
    if kind == NO_TOKENIZER:
        raise TokenizerError(f"{engine_dir}: the engine has no tokenizer (engine.json tokenizer: {NO_TOKENIZER}); it "
                             f"serves token ids only: send input_ids to the tensorrt_llm model, or rebuild it from a "
                             f"checkpoint with the model's tokenizer.json")
    if kind == "o200k_harmony":
        return O200kHarmonyTokenizer()
    if kind == "tokenizer.json":
        f = _find_tokenizer_json(engine_dir)
        if f is None:
            raise TokenizerError(f"{engine_dir}: no tokenizer.json")
        return HFTokenizer(f)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; use o200k_harmony or tokenizer.json")


def _find_tokenizer_json(engine_dir: Path | None) -> Path | None:
    if engine_dir is None:
        return None
    for sub in ("", "checkpoint", "weights", "hf", "tokenizer"):
        f = engine_dir / sub / "tokenizer.json"
        if f.is_file():
            return f
    return None


RELEASED_MODELS = {"20b", "120b", "gpt-oss-20b", "gpt-oss-120b", "openai/gpt-oss-20b", "openai/gpt-oss-120b"}


def choose_tokenizer(engine_dir: Path | None) -> str:
    """engine.json "tokenizer" if set; o200k_harmony for the released models (and any model with the o200k_harmony
    vocabulary size and no tokenizer.json); else the engine's tokenizer.json."""
    from spec.manifest import EngineManifest, is_engine_dir
    manifest = EngineManifest.read(engine_dir) if engine_dir is not None and is_engine_dir(engine_dir) else None
    if manifest is not None and manifest.tokenizer:
        return manifest.tokenizer
    if manifest is not None and manifest.model in RELEASED_MODELS:
        return "o200k_harmony"
    if _find_tokenizer_json(engine_dir) is not None:
        return "tokenizer.json"
    vocab = _vocab_size(engine_dir)
    if vocab is None or vocab >= O200K_HARMONY_VOCAB:
        return "o200k_harmony"
    raise TokenizerError(f"{engine_dir}: no tokenizer.json and a vocabulary of {vocab} tokens, which is not "
                         f"o200k_harmony ({O200K_HARMONY_VOCAB}); add the model's tokenizer.json to the engine dir")


def checkpoint_tokenizer(src: Path, model_name: str) -> str:
    """Stage 2 of build-engine: the tokenizer an engine built from the checkpoint folder `src` will serve with,
    by choose_tokenizer's rule (the build copies src/tokenizer.json into the engine). A checkpoint with none, whose
    vocabulary is not o200k_harmony's, gets NO_TOKENIZER: the engine builds and serves token ids."""
    if model_name in RELEASED_MODELS:
        return "o200k_harmony"
    if (src / "tokenizer.json").is_file():
        return "tokenizer.json"
    try:
        vocab = json.loads((src / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        vocab = None        # the checkpoint's own checks name a missing or broken config.json
    if vocab is None or vocab >= O200K_HARMONY_VOCAB:
        return "o200k_harmony"
    return NO_TOKENIZER


def _vocab_size(engine_dir: Path | None) -> int | None:
    if engine_dir is None:
        return None
    from runtime.api import RuntimeLoadError, find_checkpoint
    try:
        f = find_checkpoint(engine_dir) / "config.json"
    except RuntimeLoadError:
        return None
    return json.loads(f.read_text(encoding="utf-8")).get("vocab_size")
