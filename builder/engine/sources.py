"""Where a build's checkpoint comes from: --checkpoint, the tiny model shipped in the package, or the
Hugging Face cache / hub for the released models."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from spec.registry.models import ModelConfig


class SourceError(RuntimeError):
    pass


def shipped_checkpoint(model: ModelConfig) -> Path | None:
    path = Path(str(resources.files("builder").joinpath(f"assets/{model.name}")))
    return path if (path / "config.json").is_file() else None


def resolve_checkpoint(model: ModelConfig, checkpoint: str | None) -> Path:
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_dir():
            raise SourceError(f"--checkpoint {checkpoint}: no such folder")
        return path
    shipped = shipped_checkpoint(model)
    if shipped:
        return shipped
    if not model.hf_repo:
        raise SourceError(f"model {model.name} has no released weights and none ship with this package; "
                          f"pass --checkpoint DIR")
    return _from_hub(model.hf_repo)


def source_quant_before_build(model: ModelConfig, checkpoint: str | None) -> str | None:
    """The registry format the build's source will store, known without reading a tensor (what `--plan` needs
    to say what `--quant auto` keeps): --checkpoint's config files, the shipped checkpoint's, or the released
    repository's declared format (ModelConfig.hf_repo_quant). None where nothing says (an unreadable config
    folder, a model with no weights anywhere)."""
    from checkpoint.errors import CheckpointError
    from checkpoint.modelopt_config import source_quant
    folder = Path(checkpoint) if checkpoint else shipped_checkpoint(model)
    if folder is None:
        return model.hf_repo_quant
    try:
        return source_quant(folder)
    except (CheckpointError, OSError, StopIteration):
        return None


def _from_hub(repo: str) -> Path:
    """The cached snapshot if there is one; otherwise a download, which needs the network."""
    how = (f"pass --checkpoint DIR (a folder with config.json and the .safetensors files of {repo}), "
           f"or fetch it on a connected machine: `huggingface-cli download {repo} --exclude 'original/*' 'metal/*'`")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise SourceError(f"huggingface_hub is not installed, so {repo} cannot be looked up; {how}") from None
    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as e:
        raise SourceError(f"{repo} is not in the Hugging Face cache and could not be downloaded "
                          f"({type(e).__name__}); {how}") from None
