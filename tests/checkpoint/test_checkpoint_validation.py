"""Bad input: every case exits 2 through the CLI with a message naming the file, tensor and fix, and an
existing DST (even with --force) is left exactly as it was, with no temporary folders left behind."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from builder.convert_cli import main as cli_main
from checkpoint import CheckpointError
from checkpoint.convert import convert_checkpoint, load_canonical
from tests.support.checkpoints import hf_checkpoint

ST = "model.safetensors"


def _copy(tmp_path, fmt="hf"):
    src = tmp_path / "src"
    if fmt == "hf":
        shutil.copytree(hf_checkpoint("a"), src)
    else:
        convert_checkpoint(hf_checkpoint("a"), src, fmt, progress=False)
    return src


def _edit_tensors(src, fn):
    t = load_file(src / ST)
    fn(t)
    save_file(t, src / ST, metadata={"format": "pt"})


def _edit_config(src, fn):
    cfg = json.loads((src / "config.json").read_text())
    fn(cfg)
    (src / "config.json").write_text(json.dumps(cfg))


def _edit_header(src, fn):
    raw = (src / ST).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    fn(header)
    new = json.dumps(header).encode()
    (src / ST).write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def _nan_inf(t):
    w = t["model.layers.1.mlp.router.weight"]
    w[0, :2] = float("nan")
    w[1, 3] = float("inf")


def _same_size_overlap(h):
    q, o = "model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.o_proj.bias"   # same byte size
    h[q]["data_offsets"] = h[o]["data_offsets"]


CASES = {
    "missing": (lambda s: _edit_tensors(s, lambda t: t.pop("model.layers.1.self_attn.sinks")),
                ["missing 1: model.layers.1.self_attn.sinks"]),
    "unexpected": (lambda s: _edit_tensors(s, lambda t: t.update({"model.layers.0.mlp.extra": torch.ones(2)})),
                   ["unexpected 1: model.layers.0.mlp.extra"]),
    "shape": (lambda s: _edit_tensors(s, lambda t: t.update({"model.layers.0.self_attn.q_proj.weight":
                                                             torch.ones(48, 64, dtype=torch.bfloat16)})),
              ["model.layers.0.self_attn.q_proj.weight in model.safetensors has shape [48, 64]",
               "implies [64, 64]"]),
    "config_layers": (lambda s: _edit_config(s, lambda c: c.update(num_hidden_layers=1, layer_types=None)),
                      ["config says 1 layers but tensors exist for layer 1", "model.layers.1.input_layernorm.weight"]),
    "config_experts": (lambda s: _edit_config(s, lambda c: c.update(num_local_experts=8)),
                       ["model.layers.0.mlp.router.weight in model.safetensors has shape [4, 64]",
                        "implies [8, 64]", "num_experts=8", "config contradicts the tensors"]),
    "dtype": (lambda s: _edit_tensors(s, lambda t: t.update({"model.layers.0.self_attn.sinks":
                                                             torch.ones(4, dtype=torch.int32)})),
              ["model.layers.0.self_attn.sinks has dtype I32", "expected a float type"]),
    "nan_inf": (lambda s: _edit_tensors(s, _nan_inf),
                ["model.safetensors: tensor model.layers.1.mlp.router.weight has 2 NaN and 1 Inf values out of 256"]),
    "truncated": (lambda s: (s / ST).write_bytes((s / ST).read_bytes()[:-100]),
                  ["model.safetensors: truncated or corrupt", "run past the data buffer"]),
    "header_past_eof": (lambda s: (s / ST).write_bytes(struct.pack("<Q", 10**6) + (s / ST).read_bytes()[8:]),
                        ["header length 1000000 runs past the end of the file"]),
    "absurd_header": (lambda s: (s / ST).write_bytes(struct.pack("<Q", 2**40) + (s / ST).read_bytes()[8:]),
                      ["header length 1099511627776 bytes is absurd"]),
    "tiny_file": (lambda s: (s / ST).write_bytes(b"abc"), ["truncated: 3 bytes"]),
    "bad_json": (lambda s: (s / ST).write_bytes(struct.pack("<Q", 4) + b"{x: " + b"\0" * 64),
                 ["corrupt header, not valid JSON"]),
    "overlap": (lambda s: _edit_header(s, _same_size_overlap),
                ["model.layers.0.self_attn.o_proj.bias", "model.layers.0.self_attn.q_proj.bias", "overlap"]),
    "offsets_out_of_range": (lambda s: _edit_header(s, lambda h: h["lm_head.weight"].update(
                                 data_offsets=[10**9, 10**9 + 256 * 64 * 2])),
                             ["tensor 'lm_head.weight' data_offsets [1000000000, 1000032768] run past"]),
    "offsets_size": (lambda s: _edit_header(s, lambda h: h["model.norm.weight"].update(shape=[65])),
                     ["'model.norm.weight' BF16 [65] needs 130 bytes"]),
    "quant_config_contradicts": (lambda s: _edit_config(s, lambda c: c.update(
                                     quantization_config={"quant_method": "mxfp4"})),
                                 ["quant_method is 'mxfp4' but the tensors hold unpacked", "contradicts"]),
    "yarn_truncate": (lambda s: _edit_config(s, lambda c: c["rope_parameters"].update(truncate="no")),
                      ["truncate", "true or false"]),
    "no_config": (lambda s: (s / "config.json").unlink(), ["config.json: missing"]),
    "config_not_json": (lambda s: (s / "config.json").write_text("{"), ["config.json: not valid JSON"]),
    "no_weights": (lambda s: (s / ST).unlink(), ["no *.safetensors files"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_and_dst_untouched(tmp_path, capsys, case):
    src = _copy(tmp_path)
    mutate, expected = CASES[case]
    mutate(src)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "config.json").write_text("{}")          # an earlier conversion: --force may replace it
    (dst / "keep.txt").write_text("precious")
    rc = cli_main([str(src), str(dst), "--to", "hf-mxfp4", "--force", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert "fix:" in err
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "keep.txt"]
    assert (dst / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_mxfp4_scale_255(tmp_path, capsys):
    src = _copy(tmp_path, "hf-mxfp4")
    name = "model.layers.1.mlp.experts.down_proj_scales"
    _edit_tensors(src, lambda t: t[name].view(-1)[:3].fill_(255))
    rc = cli_main([str(src), str(tmp_path / "dst"), "--to", "openai", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"tensor {name} has 3 MXFP4 scale byte(s) equal to 255 (NaN in e8m0)" in err
    assert not (tmp_path / "dst").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_openai_config_extra_key(tmp_path, capsys):
    src = _copy(tmp_path, "openai")
    _edit_config(src, lambda c: c.update(swiglu_alpha=1.702))
    assert cli_main([str(src), str(tmp_path / "dst"), "--to", "hf", "--no-progress"]) == 2
    assert "unexpected ['swiglu_alpha']" in capsys.readouterr().err


def test_missing_shard(tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(hf_checkpoint("a", shard=True), src)
    victim = sorted(src.glob("model-*.safetensors"))[1]
    victim.unlink()
    assert cli_main([str(src), str(tmp_path / "dst"), "--to", "hf", "--no-progress"]) == 2
    assert f"lists shard '{victim.name}', which is missing" in capsys.readouterr().err


def test_existing_dst_needs_force(tmp_path, capsys):
    src, dst = hf_checkpoint("a"), tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("precious")
    assert cli_main([str(src), str(dst), "--to", "hf", "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err and (dst / "keep.txt").exists()
    # --force replaces an earlier checkpoint (or an empty folder), never a folder of other files
    assert cli_main([str(src), str(dst), "--to", "hf", "--no-progress", "--force"]) == 2
    assert "is not a checkpoint folder" in capsys.readouterr().err and (dst / "keep.txt").exists()
    (dst / "config.json").write_text("{}")
    assert cli_main([str(src), str(dst), "--to", "hf", "--no-progress", "--force"]) == 0
    assert not (dst / "keep.txt").exists() and (dst / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_dst_overlapping_src(tmp_path, capsys):
    src = _copy(tmp_path)
    for dst in (src, src / "inner", tmp_path):
        assert cli_main([str(src), str(dst), "--to", "hf", "--force", "--no-progress"]) == 2
        assert "overlaps SRC" in capsys.readouterr().err
    assert load_canonical(src).format == "hf"


def test_bad_target_and_src(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main([str(hf_checkpoint("a")), str(tmp_path / "d"), "--to", "gguf"])
    assert e.value.code == 2
    assert cli_main([str(tmp_path / "nope"), str(tmp_path / "d"), "--to", "hf"]) == 2
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="unknown target format 'gguf'"):
        convert_checkpoint(hf_checkpoint("a"), tmp_path / "d", "gguf")


def test_dropped_tensors_are_ignored(tmp_path):
    src = _copy(tmp_path)
    _edit_tensors(src, lambda t: t.update({"model.rotary_emb.inv_freq": torch.ones(8)}))
    out = convert_checkpoint(src, tmp_path / "out", "hf", progress=False)
    assert "model.rotary_emb.inv_freq" not in load_file(out / ST)


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    """A failure after writing started (here: NaN found in the last tensor) removes the partial output."""
    src = _copy(tmp_path)
    _edit_tensors(src, lambda t: t["lm_head.weight"].view(-1)[-1:].fill_(float("nan")))
    with pytest.raises(CheckpointError, match="lm_head.weight has 1 NaN"):
        convert_checkpoint(src, tmp_path / "out", "hf", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
