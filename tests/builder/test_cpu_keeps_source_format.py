"""`build-engine --gpu cpu --quant auto` keeps an MXFP4 source's MXFP4 (spec.registry.quant_formats.
AUTO_KEEPS_SOURCE_BY_ARCH): the engine stores the released format (its expert bytes are the source's), and
runs it as transformers runs the MXFP4 checkpoint (oracle: GptOssForCausalLM with Mxfp4Config(dequantize)).
Negative controls: a bf16 source stays bf16, an explicit --quant bf16 on the MXFP4 source re-quantizes, and
Blackwell's auto still picks its own nvfp4 for the same source (a lookup per architecture, not per source)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

from checkpoint.modelopt_config import source_quant
from checkpoint.convert import convert_checkpoint, load_canonical
from runtime.api import Runtime
from spec.manifest import MANIFEST_FILE
from spec.registry.gpus import get_gpu
from spec.target import quant_for
from tests.support import BIN
from tests.support.checkpoints import hf_logits
from tests.support.quant_export import TINY


@pytest.fixture(scope="module")
def mxfp4_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    src = convert_checkpoint(TINY, root / "tiny-mxfp4", to="hf-mxfp4", progress=False)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if not (src / f).exists():
            shutil.copyfile(TINY / f, src / f)
    return src


def _build(src, out, *extra):
    r = subprocess.run([str(BIN / "build-engine"), "--checkpoint", str(src), "--gpu", "cpu", "--output", str(out),
                        "--cache-policy", "off", "--no-progress", *extra],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    return json.loads((out / MANIFEST_FILE).read_text()), r.stderr


def _planned(src, *extra):
    """What `build-engine --plan` says the build will store (JSON quant and the note on how auto chose)."""
    args = ["--checkpoint", str(src)] if src else []
    r = subprocess.run([str(BIN / "build-engine"), *args, "--gpu", "cpu", "--plan", "--json", *extra],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return out["quant"], out["quant_note"]


def _blocks(folder):
    with load_canonical(folder) as ck:
        return ck.quant, {n: ck.get(n) for n in ck.names() if ".moe." in n and n.endswith("weight") and "router" not in n}


def test_auto_keeps_mxfp4_and_runs_like_transformers(mxfp4_src, tmp_path):
    assert source_quant(mxfp4_src) == "mxfp4" and source_quant(TINY) == "bf16"
    m, err = _build(mxfp4_src, tmp_path / "e")
    assert m["quant"] == "mxfp4" and "keeps the source's mxfp4" in err
    assert _planned(mxfp4_src) == (m["quant"], "auto keeps the source's mxfp4 on cpu")   # --plan says what it did
    (sq, src_w), (eq, eng_w) = _blocks(mxfp4_src), _blocks(tmp_path / "e")
    assert sq == eq == "mxfp4" and src_w.keys() == eng_w.keys() and src_w
    for n in src_w:                                              # the released bytes, as they are
        assert (src_w[n].blocks == eng_w[n].blocks).all() and (src_w[n].scales == eng_w[n].scales).all()
    ids = torch.tensor([[5, 17, 250, 3000, 42, 9, 1024, 77]])
    ours = Runtime.from_dir(tmp_path / "e").prompt_logits(ids[0].tolist())
    ref = hf_logits(mxfp4_src, ids, mxfp4=True)
    assert float((ours - ref).abs().max() / ref.abs().max()) < 1e-4
    bf16_ref = hf_logits(TINY, ids)                            # the model before MXFP4: measurably other
    assert float((ours - bf16_ref).abs().max() / bf16_ref.abs().max()) > 1e-3


def test_negative_controls(mxfp4_src, tmp_path):
    assert _build(TINY, tmp_path / "b")[0]["quant"] == _planned(TINY)[0] == "bf16"
    assert _build(mxfp4_src, tmp_path / "q", "--quant", "bf16")[0]["quant"] == "bf16"
    assert _planned(mxfp4_src, "--quant", "bf16") == ("bf16", "")
    assert quant_for(get_gpu("b200"), "auto", "mxfp4").name == "nvfp4"
    assert quant_for(get_gpu("cpu"), "auto", "nvfp4").name == "bf16"   # only the listed formats are kept


def test_plan_without_checkpoint_says_what_auto_keeps():
    """No --checkpoint: the released 20b is declared MXFP4 (ModelConfig.hf_repo_quant), so --plan resolves it as
    the build will; a model whose source format nothing declares gets the rule in words, not a guess."""
    assert _planned(None, "--model", "20b") == ("mxfp4", "auto keeps the source's mxfp4 on cpu")
    quant, note = _planned(None, "--model", "tiny-dense")
    assert quant == "bf16" and "keeps the source's format if it is mxfp4" in note and "else bf16" in note
