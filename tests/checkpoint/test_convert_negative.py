"""Negative controls: the oracle checks of test_convert_roundtrip must catch a converter that flips the
gate/up interleave or drops the sinks. Each broken converter runs fine and writes a loadable model;
only the logits give it away."""

from __future__ import annotations

import pytest
import torch

from checkpoint.convert import convert_checkpoint, tables
from checkpoint.convert import quirks as q
from checkpoint.convert.mapping import expand
from spec.registry import get_model
from tests.support.checkpoints import hf_checkpoint, hf_logits, prompt, reference_logits

L = "model.layers.{layer}."
B = "block.{layer}."


def _patch(monkeypatch, fmt: str, name: str, **changes):
    """FORMATS[fmt] with the row naming `name` edited (tables.with_row), for this test only."""
    monkeypatch.setitem(tables.FORMATS, fmt, tables.with_row(tables.FORMATS[fmt], name, **changes))


def swapped(fn):
    """The same write quirk with gate and up exchanged: the interleave flipped."""
    return q.rowwise(lambda c, gate, up: fn(c, up, gate))


@q.rowwise
def zeros(c, x):
    return torch.zeros_like(x)


def _lossless_hf_ok(src, out, key):
    ids = prompt(key)
    return torch.equal(hf_logits(src, ids), hf_logits(out, ids))


def _reference_ok(mx, oa, key):
    ids = prompt(key)
    return (reference_logits(oa, ids) - hf_logits(mx, ids, mxfp4=True)).abs().max().item() < 1e-5


def test_controls_pass_unbroken(tmp_path):
    src = hf_checkpoint("a")
    assert _lossless_hf_ok(src, convert_checkpoint(src, tmp_path / "hf", "hf", progress=False), "a")
    mx = convert_checkpoint(src, tmp_path / "mx", "hf-mxfp4", progress=False)
    assert _reference_ok(mx, convert_checkpoint(mx, tmp_path / "oa", "openai", progress=False), "a")


def test_flipped_interleave_is_caught_by_transformers(tmp_path, monkeypatch):
    _patch(monkeypatch, "hf", L + "mlp.experts.gate_up_proj", write=swapped(q.hf_gate_up))
    src = hf_checkpoint("a")
    assert not _lossless_hf_ok(src, convert_checkpoint(src, tmp_path / "hf", "hf", progress=False), "a")


def test_flipped_interleave_is_caught_by_the_reference(tmp_path, monkeypatch):
    src = hf_checkpoint("a")
    mx = convert_checkpoint(src, tmp_path / "mx", "hf-mxfp4", progress=False)
    _patch(monkeypatch, "openai", B + "mlp.mlp1_weight.blocks", write=swapped(q.packed_gate_up))
    assert not _reference_ok(mx, convert_checkpoint(mx, tmp_path / "oa", "openai", progress=False), "a")


@pytest.mark.parametrize("fmt", ["hf", "openai"])
def test_dropped_sinks_are_caught(tmp_path, monkeypatch, fmt):
    src = hf_checkpoint("a")
    mx = convert_checkpoint(src, tmp_path / "mx", "hf-mxfp4", progress=False)
    sinks = L + "self_attn.sinks" if fmt == "hf" else B + "attn.sinks"
    _patch(monkeypatch, fmt, sinks, write=zeros)
    if fmt == "hf":
        assert not _lossless_hf_ok(src, convert_checkpoint(src, tmp_path / "hf", "hf", progress=False), "a")
    else:
        assert not _reference_ok(mx, convert_checkpoint(mx, tmp_path / "oa", "openai", progress=False), "a")


def test_tables_missing_a_tensor_fail_the_exhaustiveness_check(monkeypatch):
    _patch(monkeypatch, "openai", B + "attn.sinks", write=())           # the table writes no sinks
    with pytest.raises(AssertionError, match=r"block\.0\.attn\.sinks"):
        expand("openai", get_model("tiny"))
    _patch(monkeypatch, "hf", "layers.{layer}.attn.sinks", read=())   # ... reads no sinks
    with pytest.raises(AssertionError, match=r"missing \['layers\.0\.attn\.sinks'"):
        expand("hf", get_model("tiny"))


def test_with_row_edits_that_row_only():
    hf = tables.FORMATS["hf"]
    edited = tables.with_row(hf, L + "self_attn.sinks", write=zeros)
    changed = {k for k in hf.write if hf.write[k] != edited.write[k]}
    assert changed == {L + "self_attn.sinks"} and edited.read == hf.read and hf.write[L + "self_attn.sinks"][0] is q.same
    with pytest.raises(KeyError, match="in 0 rows"):
        tables.with_row(hf, "no.such.tensor", write=zeros)
