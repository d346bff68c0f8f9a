"""The one reader every tool uses for an engine directory's values: engine.json and network.json, each parsed
strictly (spec.manifest, spec.network) and every limit and id range-checked (spec.bounds).

    values = read_engine(engine_dir)      # ENGINE_ERRORS on anything off; values.manifest, values.network
    except ENGINE_ERRORS as e: print(e); exit 2

run-engine, serve-engine, write-model-repo, deploy-engine and build-engine's install step call it, so a value
that one tool refuses is refused by all of them (an engine.json limit of 10^18, negative heads in network.json,
an end token outside the vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spec.bounds import BOUNDS, EngineValueError, check_int, check_number, check_token_ids
from spec.manifest import MANIFEST_FILE, EngineManifest, ManifestError
from spec.network import NETWORK_FILE, Network, NetworkError, load_network

# What read_engine raises: each names the file, the key and the value.
ENGINE_ERRORS = (ManifestError, NetworkError, EngineValueError)

# The fit plan's numeric fields (builder.fit.FitPlan) and the range each is checked against; a field the
# deployment sizes objects from must be a JSON number, never a string such as "NaN".
PLAN_NUMBERS = {
    "tp": "gpus", "ep": "gpus", "params_total": "plan_count", "params_active": "plan_count",
    "max_concurrent_sequences": "plan_count", "max_seq_len": "plan_count", "max_batch_size": "plan_count",
    "fits_max_seq_len": "plan_count", "fits_max_batch_size": "plan_count",
    "weight_bytes_per_gpu": "bytes", "kv_bytes_per_token": "bytes", "memory_bytes_per_gpu": "bytes",
    "runtime_reserve_bytes": "bytes", "kv_budget_bytes_per_gpu": "bytes", "kv_bytes_per_sequence": "bytes",
    "sliding_kv_bytes_per_sequence": "bytes", "bytes_read_per_token_batch1": "bytes",
    "decode_tokens_per_s_batch1": "rate", "decode_tokens_per_s_batch_n": "rate", "prefill_tokens_per_s": "rate",
}
# Where the SM appears besides the top-level field.
SM_FIELDS = (("target", "sm"), ("tensorrt", "sm"))


@dataclass(frozen=True)
class EngineValues:
    engine_dir: Path
    manifest: EngineManifest
    # None when the directory has no network.json (a checkpoint folder given an engine.json by hand, the tests'
    # tiny engine): readers then derive the network from the checkpoint, which validates the same ranges.
    network: Network | None

    @property
    def vocab_size(self) -> int | None:
        return self.network.vocab_size if self.network is not None else None


def check_manifest_values(m: EngineManifest, where: str, vocab_size: int | None = None) -> None:
    """Range-check a parsed manifest (EngineValueError naming `where`, the key, the value and the range)."""
    check_int(where, "max_seq_len", m.max_seq_len, "max_seq_len")
    check_int(where, "max_batch_size", m.max_batch_size, "max_batch_size")
    check_int(where, "tp", m.tp, "gpus")
    check_int(where, "ep", m.ep, "gpus")
    if m.sm is not None:
        check_int(where, "sm", m.sm, "sm")
    for section, key in SM_FIELDS:
        value = (getattr(m, section) or {}).get(key)
        if value is not None:
            check_int(where, f"{section}.{key}", value, "sm")
    if m.build_seconds is not None:
        check_number(where, "build_seconds", m.build_seconds, "seconds")
    for key, kind in PLAN_NUMBERS.items():
        if key in m.plan and not (m.plan[key] is None and key.startswith("fits_")):
            check_number(where, f"plan.{key}", m.plan[key], kind)
    check_token_ids(where, "stop_token_ids", m.stop_token_ids, vocab_size)


def read_engine(engine_dir: str | Path, need_network: bool = False) -> EngineValues:
    """engine.json (and network.json when present, or required by need_network) parsed and range-checked, and
    the two checked against each other: stop tokens inside the network's vocabulary, max_seq_len within its
    positions."""
    engine_dir = Path(engine_dir)
    manifest = EngineManifest.read(engine_dir)
    where = str(engine_dir / MANIFEST_FILE)
    net_file = engine_dir / NETWORK_FILE
    network = None
    if net_file.exists() or need_network:
        network = load_network(net_file)   # NetworkError names the file; includes spec.bounds' network ranges
    check_manifest_values(manifest, where, network.vocab_size if network is not None else None)
    if network is not None and manifest.max_seq_len > network.max_position_embeddings:
        raise EngineValueError(
            f"{where}: max_seq_len = {manifest.max_seq_len}: above the network's max_position_embeddings "
            f"{network.max_position_embeddings} ({net_file}); allowed: an integer in "
            f"[{BOUNDS['max_seq_len'].lo}, {network.max_position_embeddings}]; rebuild with a smaller --max-seq-len")
    return EngineValues(engine_dir, manifest, network)
