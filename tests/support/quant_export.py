"""Shared by the quantized-export tests: tiny HF models with a real tokenizer, NVIDIA ModelOpt imported once
per session (10-30 s), and ModelOpt's own export of a model for comparison."""

from __future__ import annotations

import contextlib
import copy
import functools
import shutil
import warnings
from pathlib import Path

import torch

from tests.support import TINY_ASSETS
from tests.support.checkpoints import ROOT, hf_config, randomize_

TINY = TINY_ASSETS
CALIB_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Water boils at 100 degrees at sea level.",
               "She opened the door and walked into the garden.", "def f(x):\n    return 2 * x"]


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core runner torch's thread pool
    made calibration 8x slower (6.5 s vs 0.8 s); the tests run single-threaded and restore the setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@functools.cache
def modelopt():
    """(mtq, export_hf_checkpoint, quant configs module), imported once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint
        from modelopt.torch.quantization import config
    return mtq, export_hf_checkpoint, config


@functools.cache
def calib_file() -> Path:
    path = ROOT / "calib.txt"
    path.write_text("\n".join(t.replace("\n", " ") for t in CALIB_TEXTS) + "\n")
    return path


@functools.cache
def source(key: str) -> Path:
    """A random bf16 HF model (ckpt_helpers config `key`) with the tiny model's tokenizer (vocab 4096)."""
    from transformers import GptOssForCausalLM
    cfg = hf_config(key)
    cfg.vocab_size = 4096
    torch.manual_seed(0)
    model = GptOssForCausalLM(cfg)
    randomize_(model, seed=7)
    out = ROOT / f"qsrc-{key}"
    model.to(torch.bfloat16).save_pretrained(out)
    shutil.copy(TINY / "tokenizer.json", out / "tokenizer.json")
    return out


def calib_ids(src: Path) -> list[list[int]]:
    """The token ids our calibration sees for calib_file(), one list per text."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    return [tok.encode(line, add_special_tokens=False).ids for line in calib_file().read_text().splitlines() if line]


# name -> (ModelOpt preset, drop its input quantizers (weight-only), add FP8 KV cache quantizers)
RECIPES = {
    "w4a16_nvfp4": ("NVFP4_EXPERTS_ONLY_CFG", True, False),
    "nvfp4": ("NVFP4_EXPERTS_ONLY_CFG", False, False),
    "fp8_kv": ("FP8_DEFAULT_CFG", False, True),
}


@functools.cache
def modelopt_export(key: str, recipe: str) -> Path:
    """ModelOpt's mtq.quantize + export_hf_checkpoint of source(key) on CPU; activation calibration (when the
    recipe has any) runs on exactly the token ids our calibration uses."""
    from transformers import GptOssForCausalLM
    mtq, export_hf_checkpoint, cfgs = modelopt()
    preset, weight_only, kv = RECIPES[recipe]
    qc = copy.deepcopy(getattr(cfgs, preset))
    if weight_only:
        qc["quant_cfg"] = [e for e in qc["quant_cfg"] if "input_quantizer" not in e.get("quantizer_name", "")]
    if kv:
        qc["quant_cfg"] += copy.deepcopy(cfgs.FP8_KV_CFG["quant_cfg"])
    src = source(key)
    model = GptOssForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
    seqs = calib_ids(src)

    def forward_loop(m):
        with torch.no_grad():
            for ids in seqs:
                m(torch.tensor([ids]))
    out = ROOT / f"modelopt-{key}-{recipe}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mtq.quantize(model, qc, forward_loop=None if weight_only else forward_loop)
        # dtype given explicitly: from a saved config ModelOpt 0.47 would pass the string "bfloat16" to .to()
        export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=out)
    return out
