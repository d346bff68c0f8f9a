"""Nothing the user had is lost, and small bad inputs never cost big work: outputs apart from sources (resolved
paths, symlinks), only engines or empty folders replaced, config values range-checked before per-layer work,
header bytes capped across shards, aux files by allow-list and never through links out of the folder,
a checkpoint that is not --model refused, a cached engine's manifest naming its own directory."""

import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.engine import BuildError
from builder.engine.build import BuildRequest, build
from builder.engine.sources import shipped_checkpoint
from checkpoint.convert import convert_checkpoint
from checkpoint.errors import CheckpointError
from spec.manifest import MANIFEST_FILE
from spec.registry.models import get_model
from tests.support import BIN
from tests.support.fuzz_checkpoint import write_base

pytestmark = pytest.mark.reliability


def digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def tiny_ckpt(tmp_path):
    """A copy of the shipped tiny checkpoint inside a folder that holds other things of the user's."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("the user's notes")
    src = home / "tiny"
    shutil.copytree(shipped_checkpoint(get_model("tiny")), src)
    return src


def _build(src, out, tmp_path, **kw):
    return build(BuildRequest(model="tiny", gpu="cpu", checkpoint=str(src), output=str(out),
                              cache_dir=str(tmp_path / "cache"), progress=False, **kw))


# -- 1. outputs apart from sources -----------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "parent", "inside", "link-to-source", "link-to-parent"])
def test_build_output_overlapping_the_checkpoint_is_refused(tiny_ckpt, tmp_path, where):
    home = tiny_ckpt.parent
    before = digest(home)
    out = {"same": tiny_ckpt, "parent": home, "inside": tiny_ckpt / "engine",
           "link-to-source": tmp_path / "link", "link-to-parent": tmp_path / "link"}[where]
    if where.startswith("link"):
        os.symlink(tiny_ckpt if where == "link-to-source" else home, out)
    with pytest.raises(BuildError, match="overlaps --checkpoint"):
        _build(tiny_ckpt, out, tmp_path)
    assert digest(home) == before


def test_build_cli_overlap_exits_2_and_keeps_everything(tiny_ckpt, tmp_path):
    home = tiny_ckpt.parent
    before = digest(home)
    r = subprocess.run([str(BIN / "build-engine"), "--model", "tiny", "--gpu", "cpu", "--checkpoint", str(tiny_ckpt),
                        "--output", str(home), "--cache-dir", str(tmp_path / "c"), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "overlaps --checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert digest(home) == before


def test_build_replaces_only_an_engine_or_an_empty_folder(tiny_ckpt, tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8 not an engine")
    with pytest.raises(BuildError, match="is not an engine directory"):
        _build(tiny_ckpt, other, tmp_path)
    assert (other / "cat.jpg").read_bytes() == b"\xff\xd8 not an engine"
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _build(tiny_ckpt, empty, tmp_path)
    assert (out / "engine.json").is_file()
    # and an engine may be replaced by a rebuild (a cache hit here)
    assert (_build(tiny_ckpt, empty, tmp_path) / "engine.json").is_file()


def test_build_output_inside_the_cache_is_refused(tiny_ckpt, tmp_path):
    with pytest.raises(BuildError, match="overlaps the build cache"):
        _build(tiny_ckpt, tmp_path / "cache" / "engines" / "mine", tmp_path)


def test_convert_dst_that_resolves_to_src_is_refused(tmp_path):
    src = tmp_path / "src"
    write_base(src)
    before = digest(src)
    os.symlink(src, tmp_path / "alias")
    for dst in (tmp_path / "alias", tmp_path / "alias" / "x", tmp_path):
        with pytest.raises(CheckpointError, match="overlaps SRC"):
            convert_checkpoint(src, dst, "hf", force=True, progress=False)
    assert digest(src) == before


def test_write_model_repo_output_must_not_be_or_contain_the_engine(tmp_path):
    from model_repo.write import main
    engine = tmp_path / "eng"
    engine.mkdir()
    (engine / MANIFEST_FILE).write_text(json.dumps({"max_seq_len": 64, "max_batch_size": 2, "model": "tiny"}))
    (tmp_path / "link").symlink_to(engine)
    before = digest(tmp_path)
    for out in (engine, tmp_path, tmp_path / "link"):
        assert main([str(engine), "--output", str(out)]) == 2
    assert digest(tmp_path) == before


# -- 5. aux files ----------------------------------------------------------------------------------------
def test_aux_files_by_allow_list_and_never_through_links_out(tmp_path):
    src, secret = tmp_path / "src", tmp_path / "secret.txt"
    write_base(src)
    secret.write_text("a private key")
    (src / "id_rsa").write_text("never copied")
    (src / "notes.md").write_text("never copied")
    (src / "generation_config.json").write_text("{}")
    convert_checkpoint(src, tmp_path / "a", "hf", progress=False)
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"generation_config.json", "tokenizer_config.json"} <= names and not {"id_rsa", "notes.md"} & names
    os.symlink(secret, src / "tokenizer.json")
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        convert_checkpoint(src, tmp_path / "b", "hf", progress=False)
    assert not (tmp_path / "b").exists()
    (src / "tokenizer.json").unlink()
    (src / "tok.real").write_text('{"inside": true}')
    os.symlink("tok.real", src / "tokenizer.json")                 # a link inside the folder is fine
    convert_checkpoint(src, tmp_path / "c", "hf", progress=False)
    assert (tmp_path / "c" / "tokenizer.json").read_text() == '{"inside": true}'
    assert not (tmp_path / "c" / "tokenizer.json").is_symlink()


# -- 3. bounded work, named errors -----------------------------------------------------------------------
def _edit_config(folder: Path, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if "." in k:
            a, b = k.split(".")
            cfg[a][b] = v
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": 10 ** 9}, "num_hidden_layers = 1000000000 is outside"),
    ({"num_hidden_layers": 40, "layer_types": None}, "the config says 40 layers but the tensors hold only 2"),
    ({"rope_parameters.factor": math.nan}, "rope_parameters.factor is nan"),
    ({"rope_parameters.rope_theta": -1.0}, "rope_parameters.rope_theta is -1.0"),
    ({"rms_norm_eps": 0.0}, "rms_norm_eps = 0.0"),
    ({"swiglu_limit": math.inf}, "swiglu_limit = inf"),
    ({"sliding_window": 0}, "sliding_window = 0 is outside"),
    ({"num_attention_heads": -4}, "num_attention_heads = -4 is outside"),
    ({"num_experts_per_tok": 9}, "experts per token 9 exceeds the 4 experts"),
    ({"head_dim": 0}, "head_dim = 0 is outside"),
    ({"hidden_size": "32"}, "hidden_size is '32', not an integer"),
    ({"rope_parameters": [1]}, "rope_parameters is [1], not an object"),
    ({"attention_bias": "yes"}, "attention_bias is 'yes', not true or false"),
])
def test_bad_config_values_are_named_errors(tmp_path, change, message):
    src = tmp_path / "src"
    write_base(src)
    _edit_config(src, **change)
    with pytest.raises(CheckpointError, match="fix:") as e:
        convert_checkpoint(src, tmp_path / "dst", "hf", progress=False)
    assert message in str(e.value)
    assert not (tmp_path / "dst").exists()


def test_nan_rope_factor_is_refused_at_build_time_too(tiny_ckpt, tmp_path):
    """Not silently plain RoPE: build-engine names the value."""
    _edit_config(tiny_ckpt, **{"rope_parameters.factor": math.nan})
    with pytest.raises(BuildError, match="rope_parameters.factor is nan"):
        _build(tiny_ckpt, tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_engine_with_a_nan_rope_factor_does_not_load(tmp_path):
    """An engine directory edited after the build: loading it for the network or the runtime refuses it."""
    from checkpoint.convert import load_canonical
    src = tmp_path / "src"
    write_base(src)
    _edit_config(src, **{"rope_parameters.factor": math.nan})
    with pytest.raises(CheckpointError, match="factor is nan"):
        load_canonical(src)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    src = tmp_path / "src"
    write_base(src)                              # a valid gpt-oss checkpoint, but not `tiny`
    with pytest.raises(BuildError, match="is not the tiny architecture.*num_layers: checkpoint 2, tiny 4"):
        _build(src, tmp_path / "out", tmp_path)


def test_header_bytes_are_capped_across_shards(tmp_path, monkeypatch):
    from checkpoint import store
    from checkpoint.convert import load_canonical
    src = tmp_path / "src"
    write_base(src)
    convert_checkpoint(src, tmp_path / "sharded", "hf", progress=False, max_shard_bytes=4096)
    shards = sorted((tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 3
    per_file = max(len(p.read_bytes()[8:8 + int.from_bytes(p.read_bytes()[:8], "little")]) for p in shards)
    monkeypatch.setattr(store, "MAX_TOTAL_HEADER_BYTES", per_file * 2)   # each file alone is under it
    with pytest.raises(CheckpointError, match="already hold .* bytes \\(limit"):
        load_canonical(tmp_path / "sharded")


# -- 11. a cached build names its own directory ----------------------------------------------------------
def test_cache_hit_manifest_names_the_new_output(tmp_path):
    cache = tmp_path / "cache"
    args = ["--model", "tiny", "--gpu", "h100", "--cross-build", "--cache-dir", str(cache), "--no-progress"]
    for name in ("first", "second"):
        r = subprocess.run([str(BIN / "build-engine"), *args, "--output", str(tmp_path / name)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    assert "cache hit" in r.stderr
    notes = [v.get("note", "") for v in json.loads((tmp_path / "second" / MANIFEST_FILE).read_text())["validated_on"]]
    assert any(f"build-engine --validate {tmp_path / 'second'}`" in n for n in notes), notes
    assert not any(str(tmp_path / "first") in n for n in notes)


# -- 10. errors are messages ----------------------------------------------------------------------------
def test_deeply_nested_chat_history_is_a_request_error():
    from model_repo.harmony import HarmonyRequestError, parse_history
    with pytest.raises(HarmonyRequestError, match="nested too deeply"):
        parse_history("[" * 200_000 + "]" * 200_000)


@pytest.mark.parametrize("manifest", [{"max_seq_len": "4096"}, {"max_seq_len": 64, "max_batch_size": [2]},
                                      {"max_seq_len": 64, "stop_token_ids": "2"}, {"max_seq_len": 64, "model": 5},
                                      "[" * 100_000])
def test_wrong_types_in_the_manifest_are_messages(tmp_path, capsys, manifest):
    from model_repo.write import main
    engine = tmp_path / "eng"
    engine.mkdir()
    (engine / MANIFEST_FILE).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    assert main([str(engine)]) == 2
    err = capsys.readouterr().err
    assert "engine.json" in err and "Traceback" not in err


def test_generation_past_max_position_embeddings_is_refused(capsys):
    from runtime.cli import main
    assert main([str(shipped_checkpoint(get_model("tiny"))), "--prompt", "hi", "--max-tokens", "100000000"]) == 2
    assert "past the model's max_position_embeddings 4096" in capsys.readouterr().err


def test_unwritable_destinations_are_exit_2_with_a_message(tmp_path, capsys):
    from builder.cli import build_engine_main
    from builder.convert_cli import main as convert_main
    src = tmp_path / "src"
    write_base(src)
    (tmp_path / "a-file").write_text("x")
    assert convert_main([str(src), str(tmp_path / "a-file" / "dst"), "--to", "hf", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a-file" in err and "fix:" in err and "Traceback" not in err
    assert build_engine_main(["--model", "tiny", "--gpu", "cpu", "--output", str(tmp_path / "a-file" / "eng"),
                              "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a-file" in err and "fix:" in err


def test_cleanup_of_interrupted_builds_removes_only_our_staging_folders(tmp_path):
    from checkpoint import fsutil
    dst = tmp_path / "eng"
    mine = tmp_path / ".eng.old-2024-01"              # a user's backup that merely looks like staging
    mine.mkdir()
    (mine / "keep").write_text("x")
    dead = tmp_path / ".eng.partial-999999-0123abcd"   # left by a killed build (no such process)
    dead.mkdir()
    assert fsutil.remove_stale_staging(dst) == [dead]
    assert (mine / "keep").read_text() == "x" and not dead.exists()
