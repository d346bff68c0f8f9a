"""Loading an engine into TensorRT-LLM's LLM API: the one place that turns an engine directory into `LLM(**kwargs)`,
for serving (model_repo.backends) and for `build-engine --validate` alike.

TensorRT-LLM reads the checkpoint's config.json, not network.json, so the two are checked against each other
first (spec.network.check_config_matches): an engine whose network.json was edited is refused here rather than
served as a different network. The options file is merged the way `trtllm-serve --extra_llm_api_options` merges
it (upstream's `update_llm_args_with_extra_dict`, which turns nested dicts into config objects), with a plain
dict merge where that helper is not importable.
"""

from __future__ import annotations

from pathlib import Path

OPTIONS_FILE = "llm_api_options.yaml"


class EngineLoadError(RuntimeError):
    pass


def checkpoint_dir(engine_dir: Path) -> Path:
    """Where the engine keeps its checkpoint (runtime.api.find_checkpoint)."""
    from runtime.api import RuntimeLoadError, find_checkpoint
    try:
        return find_checkpoint(Path(engine_dir))
    except RuntimeLoadError as e:
        raise EngineLoadError(str(e)) from None


def read_options(engine_dir: Path, path: str | Path | None = None) -> dict:
    """The engine's LLM-API options (llm_api_options.yaml, written by build-engine for GPU targets); {} if none."""
    import yaml
    engine_dir = Path(engine_dir)
    f = Path(path) if path else engine_dir / OPTIONS_FILE
    if not f.is_absolute():
        f = engine_dir / f
    if not f.is_file():
        return {}
    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise EngineLoadError(f"{f}: not readable YAML ({e})") from None
    if not isinstance(data, dict):
        raise EngineLoadError(f"{f}: expected a mapping of LLM-API options, got {type(data).__name__}")
    return data


def check_network_matches_checkpoint(engine_dir: Path) -> None:
    """EngineLoadError if network.json and config.json disagree (or either does not load)."""
    from checkpoint.config_io import read_model_config
    from checkpoint.errors import CheckpointError
    from spec.network import NETWORK_FILE, NetworkError, check_config_matches, load_network
    engine_dir = Path(engine_dir)
    net_file = engine_dir / NETWORK_FILE
    if not net_file.is_file():
        return
    try:
        config, _, _ = read_model_config(checkpoint_dir(engine_dir))
        check_config_matches(load_network(net_file), config, str(engine_dir))
    except (NetworkError, CheckpointError) as e:
        raise EngineLoadError(str(e)) from None


def llm_kwargs(engine_dir: Path, options_file: str | Path | None = None, **defaults) -> dict:
    """Keyword arguments for tensorrt_llm.LLM: model=the checkpoint, the options file over `defaults`."""
    engine_dir = Path(engine_dir)
    check_network_matches_checkpoint(engine_dir)
    options = {**defaults, **read_options(engine_dir, options_file)}
    base = {"model": str(checkpoint_dir(engine_dir))}
    try:  # GPU machines only; how trtllm-serve turns YAML dicts into config objects
        from tensorrt_llm.llmapi.llm_args import update_llm_args_with_extra_dict
    except ImportError:
        return {**base, **options}
    return update_llm_args_with_extra_dict(base, options)
