"""Write a Triton model repository for an engine directory.

    write_model_repo(engine_dir)                 # -> engine_dir/triton (what build-engine does)
    write_model_repo(engine_dir, "/srv/repo")    # anywhere else
    write-model-repo ENGINE_DIR [--output DIR] [--executor auto|onnxruntime|reference|tensorrt|trtllm] ...

Models: preprocessing, tensorrt_llm, postprocessing, tensorrt_llm_bls (the front model) and ensemble (the usual
client-facing name, forwarding to tensorrt_llm_bls). Each config.pbtxt is a template (model_repo/templates) whose
${...} placeholders are filled from the engine's manifest (engine.json: model, gpu, quant, max_seq_len,
max_batch_size) and the options here; a placeholder left unfilled is an error. Each Python model's model.py is a
copy of model_repo/triton_models/<model>.py.

The engine path is written relative to the repository when the repository lives inside the engine directory (so
the pair can be moved together), absolute otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from importlib import resources
from pathlib import Path

from checkpoint.fsutil import (UnsafeOutputError, check_output_apart, install_dir, remove_stale_staging,
                               staging_dir)
from model_repo.integrity import TRITON_DIR, record_repo
from model_repo.requests import MAX_CONTEXT_LOGITS_BYTES
from model_repo.tokenizer import choose_tokenizer
from runtime.executors.choice import CHOICES, SERVED_ONLY
from spec.manifest import MANIFEST_FILE

MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls", "ensemble")
PYTHON_MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
# What an engine without a tokenizer serves (model_repo.tokenizer.NO_TOKENIZER): token ids in and out.
TOKEN_ID_MODELS = ("tensorrt_llm",)
NO_TOKENIZER_NOTE = ("the engine has no tokenizer: its repository serves token ids through tensorrt_llm alone "
                     "(preprocessing, postprocessing, tensorrt_llm_bls and ensemble left out)")


def models_for(tokenizer: str) -> tuple[str, ...]:
    from model_repo.tokenizer import NO_TOKENIZER
    return TOKEN_ID_MODELS if tokenizer == NO_TOKENIZER else MODELS
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
REPO_MARKER = ".gptoss-model-repo"
DEFAULT_MAX_BATCH = 16
EXECUTORS = CHOICES + SERVED_ONLY       # the tensorrt_llm model's executor (runtime.executors.choice)


class ModelRepoError(ValueError):
    pass


def template(name: str) -> str:
    return resources.files("model_repo").joinpath(f"templates/{name}.pbtxt").read_text(encoding="utf-8")


def model_source(name: str) -> str:
    return resources.files("model_repo").joinpath(f"triton_models/{name}.py").read_text(encoding="utf-8")


def fill(text: str, values: dict, where: str = "") -> str:
    missing = sorted({m.group(1) for m in PLACEHOLDER.finditer(text)} - set(values))
    if missing:
        raise ModelRepoError(f"{where}: no value for placeholder(s) {', '.join('${' + m + '}' for m in missing)}")
    out = PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
    if "${" in out:
        raise ModelRepoError(f"{where}: a ${{...}} placeholder is left after filling")
    return out


def read_manifest(engine_dir: Path) -> dict:
    from spec.engine_values import ENGINE_ERRORS, read_engine
    if not (engine_dir / MANIFEST_FILE).is_file():
        raise ModelRepoError(f"{engine_dir}: no {MANIFEST_FILE}; pass an engine directory built by build-engine "
                             f"(or give --max-seq-len to serve a plain checkpoint folder)")
    try:
        return read_engine(engine_dir).manifest.to_dict()
    except ENGINE_ERRORS as e:
        raise ModelRepoError(str(e)) from None


def _pbtxt_string(value) -> str:
    """A value placed inside a pbtxt "..." string."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


def repo_values(engine_dir: Path, output: Path, *, executor: str = "auto", max_batch_size: int | None = None,
                max_seq_len: int | None = None, tokenizer: str | None = None,
                default_reasoning_effort: str = "medium", instances: int = 1, cpu_threads: int = 1,
                max_context_logits_bytes: int | None = None, stream_interval_ms: float | None = None) -> dict:
    engine_dir = engine_dir.resolve()
    manifest = read_manifest(engine_dir) if max_seq_len is None or (engine_dir / MANIFEST_FILE).is_file() else {}
    seq = max_seq_len or manifest.get("max_seq_len")
    if not seq or int(seq) <= 1:
        raise ModelRepoError(f"{engine_dir / MANIFEST_FILE}: max_seq_len is missing or not > 1 ({seq!r})")
    batch = max_batch_size or manifest.get("max_batch_size") or DEFAULT_MAX_BATCH
    if int(batch) < 1:
        raise ModelRepoError(f"max_batch_size must be >= 1, got {batch}")
    if executor not in EXECUTORS:
        raise ModelRepoError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if default_reasoning_effort not in ("low", "medium", "high"):
        raise ModelRepoError(f"default reasoning effort must be low, medium or high, got {default_reasoning_effort!r}")
    try:
        rel = os.path.relpath(engine_dir, output.resolve())
        inside = output.resolve().is_relative_to(engine_dir)
    except ValueError:
        rel, inside = None, False
    engine_path = rel if inside and rel else str(engine_dir)
    options_file = "llm_api_options.yaml" if (engine_dir / "llm_api_options.yaml").is_file() else ""
    stops = manifest.get("stop_token_ids") or []
    return {
        "engine_dir": _pbtxt_string(engine_path),
        "engine_model": _pbtxt_string(manifest.get("model", engine_dir.name)),
        "engine_gpu": _pbtxt_string(manifest.get("gpu", "unknown")),
        "engine_quant": _pbtxt_string(manifest.get("quant", "unknown")),
        "triton_max_batch_size": int(batch),
        "max_num_sequences": int(batch),
        "max_seq_len": int(seq),
        "tokenizer": _pbtxt_string(tokenizer or choose_tokenizer(engine_dir)),
        "executor": executor,
        "executor_choice": _pbtxt_string(_choice_here(engine_dir, executor, int(seq))),
        "decoupled_mode": "true",
        "llm_api_options_file": _pbtxt_string(options_file),
        "default_stop_ids": ",".join(str(int(s)) for s in stops),
        "default_reasoning_effort": default_reasoning_effort,
        "preprocessing_instance_count": int(instances),
        "postprocessing_instance_count": int(instances),
        "bls_instance_count": 1,
        "cpu_threads": int(cpu_threads),
        "max_context_logits_bytes": int(max_context_logits_bytes or MAX_CONTEXT_LOGITS_BYTES),
        "stream_interval_ms": _interval_ms(stream_interval_ms),
    }


def _interval_ms(value) -> str:
    """The least time between a stream's responses, ms (model_repo.responses; default MIN_INTERVAL_S)."""
    from model_repo.responses import MIN_INTERVAL_S
    ms = 1000 * MIN_INTERVAL_S if value is None else float(value)
    if not 0 <= ms <= 1000:
        raise ModelRepoError(f"stream interval must be between 0 and 1000 ms, got {value!r}")
    return f"{ms:g}"


def _choice_here(engine_dir: Path, executor: str, max_seq_len: int) -> str:
    """The executor choice on the machine writing the repository, with its reason (the model makes it again
    when it loads, on the serving machine, and logs it)."""
    from model_repo.backends import BackendError, resolve_executor
    try:
        return resolve_executor(engine_dir, executor, max_seq_len=max_seq_len).line()
    except (BackendError, ValueError, OSError) as e:
        return " ".join(f"not decided here ({e}); the model chooses when it loads".split())


def _write_llmapi_yaml(engine_dir: Path, model_dir: Path, values: dict) -> None:
    """GPU engines: upstream's llmapi model.yaml beside our tensorrt_llm model (model_repo/llmapi.py)."""
    from spec.manifest import EngineManifest, ManifestError
    try:
        if not EngineManifest.read(engine_dir).runs_on_gpu:
            return
    except ManifestError:
        return
    from model_repo.llmapi import MODEL_YAML, dump, llmapi_model_yaml
    from model_repo.trtllm import EngineLoadError
    try:
        doc = llmapi_model_yaml(engine_dir, max_batch_size=values["max_num_sequences"],
                                max_seq_len=values["max_seq_len"])
    except (EngineLoadError, ValueError) as e:
        raise ModelRepoError(f"{engine_dir}: cannot write upstream's llmapi model.yaml: {e}") from None
    (model_dir / MODEL_YAML).write_text(dump(doc), encoding="utf-8")


def write_model_repo(engine_dir: str | Path, output: str | Path | None = None, *, force: bool = True,
                     **options) -> Path:
    """Write the repository (default: ENGINE_DIR/triton). An existing folder is replaced only if it is one of ours
    (it holds REPO_MARKER) or empty; anything else is an error."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise ModelRepoError(f"{engine_dir}: not a directory")
    out = Path(output) if output is not None else engine_dir / "triton"
    try:
        check_output_apart(out, {"ENGINE_DIR": engine_dir}, "--output", inside_ok=True)
    except UnsafeOutputError as e:
        raise ModelRepoError(str(e)) from None
    values = repo_values(engine_dir, out, **options)
    if out.exists():
        if not out.is_dir():
            raise ModelRepoError(f"{out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / REPO_MARKER).is_file():
            raise ModelRepoError(f"{out}: exists and is not a model repository written by write-model-repo; "
                                 f"choose another --output")
        if not force:
            raise ModelRepoError(f"{out}: exists (pass --force to replace it)")
    remove_stale_staging(out)
    tmp = staging_dir(out)
    try:
        for name in models_for(values["tokenizer"]):
            mdir = tmp / name
            (mdir / "1").mkdir(parents=True)
            (mdir / "config.pbtxt").write_text(fill(template(name), values, f"{name}/config.pbtxt"), encoding="utf-8")
            if name in PYTHON_MODELS:
                (mdir / "1" / "model.py").write_text(model_source(name), encoding="utf-8")
        _write_llmapi_yaml(engine_dir, tmp / "tensorrt_llm", values)
        # The engine as config.pbtxt names it (relative inside the engine, else absolute): never the staging
        # folder a build writes it in, which is gone once the engine is installed.
        (tmp / REPO_MARKER).write_text(json.dumps({"engine_dir": values["engine_dir"], "values": values},
                                                  indent=1) + "\n", encoding="utf-8")
        install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.resolve() == (engine_dir / TRITON_DIR).resolve() and (engine_dir / MANIFEST_FILE).is_file():
        record_in_manifest(engine_dir)
    return out


def read_tokenizer(repo: str | Path) -> str:
    """The tokenizer a repository written here was filled with ("" if it is not one of ours)."""
    try:
        return json.loads((Path(repo) / REPO_MARKER).read_text(encoding="utf-8"))["values"]["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def record_in_manifest(engine_dir: Path) -> None:
    """The engine's own triton/ was (re)written: engine.json records its files' hashes, which serve-engine checks
    before it serves the folder (model_repo.integrity)."""
    from spec.manifest import EngineManifest
    m = EngineManifest.read(engine_dir)
    m.triton_sha256 = record_repo(engine_dir)
    m.write(engine_dir)


def leftover_placeholders(repo: str | Path) -> list[str]:
    """Every `${...}` left in a repository's config.pbtxt files, as 'model/config.pbtxt: ${name}'."""
    found = []
    for f in sorted(Path(repo).glob("*/config.pbtxt")):
        for m in re.finditer(r"\$\{[^}]*\}?", f.read_text(encoding="utf-8")):
            found.append(f"{f.parent.name}/config.pbtxt: {m.group(0)}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="write-model-repo",
                                description="Write a Triton model repository (preprocessing, tensorrt_llm, "
                                            "postprocessing, tensorrt_llm_bls, ensemble) for an engine directory.")
    p.add_argument("engine_dir", help="engine directory (engine.json, checkpoint, network.json, tokenizer)")
    p.add_argument("--output", help="where to write it (default: ENGINE_DIR/triton)")
    p.add_argument("--executor", default="auto", choices=EXECUTORS,
                   help="what tensorrt_llm runs (runtime/executors/choice.py, the rule run-engine uses): auto "
                        "(default: the TensorRT-RTX plan on an RTX GPU of the engine's SM, TensorRT-LLM on "
                        "datacenter GPUs, ONNX Runtime on CPU where it runs the engine exactly within memory, "
                        "else reference), or one by name")
    p.add_argument("--max-batch-size", type=int, help="in-flight batch size (default: engine.json max_batch_size)")
    p.add_argument("--max-seq-len", type=int, help="default: engine.json max_seq_len")
    p.add_argument("--tokenizer", choices=["o200k_harmony", "tokenizer.json"],
                   help="default: o200k_harmony for the released models, else the engine's tokenizer.json")
    p.add_argument("--reasoning-effort", default="medium", choices=["low", "medium", "high"],
                   help="default Harmony reasoning effort when a request does not set one")
    p.add_argument("--instances", type=int, default=1, help="instances of preprocessing and postprocessing")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="threads of the executor (torch's, or ONNX Runtime's intra-op; 0: their default, all cores); 1 suits small "
                        "models and shared machines")
    p.add_argument("--max-context-logits-mib", type=int,
                   help=f"largest context_logits answer (prompt x vocab float32) the server returns, MiB "
                        f"(default {MAX_CONTEXT_LOGITS_BYTES // 2**20})")
    p.add_argument("--stream-interval-ms", type=float,
                   help="least time between two streamed responses of a request (default 20; several tokens then "
                        "share a response, and more with many streams live: model_repo/responses.py); 0 sends "
                        "each token as soon as the writer can")
    args = p.parse_args(argv)
    try:
        out = write_model_repo(args.engine_dir, args.output, executor=args.executor, max_batch_size=args.max_batch_size,
                               max_seq_len=args.max_seq_len, tokenizer=args.tokenizer,
                               default_reasoning_effort=args.reasoning_effort, instances=args.instances,
                               cpu_threads=args.cpu_threads, stream_interval_ms=args.stream_interval_ms,
                               max_context_logits_bytes=args.max_context_logits_mib and args.max_context_logits_mib * 2**20)
    except (ModelRepoError, OSError) as e:
        print(f"write-model-repo: error: {e}", file=sys.stderr)
        return 2
    if models_for(read_tokenizer(out)) != MODELS:
        print(f"write-model-repo: note: {NO_TOKENIZER_NOTE}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
