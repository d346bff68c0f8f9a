"""The build's smoke run (builder.engine.validate.smoke_reference) where the reference runtime's fp32 weights do
not fit: ONNX Runtime runs the engine instead (the full gpt-oss-20b CPU engine: 84 GB of fp32 reference weights,
~14 GB in ONNX Runtime's packed lowering). Forced here on the tiny engine by shrinking the memory the reference
may take; oracle: the reference runtime's greedy tokens for the same prompt. Control: where ONNX Runtime may take
no memory either, the smoke run is skipped with the reason, not run."""

from __future__ import annotations

import builder.engine.validate as validate


def test_smoke_run_falls_back_to_onnxruntime_when_the_reference_does_not_fit(tiny_engine, monkeypatch):
    reference = validate.smoke_reference(tiny_engine, emulating="cpu")
    assert reference["ok"] and reference["runtime"] == "reference"
    monkeypatch.setattr(validate, "REFERENCE_MEMORY_FRACTION", 0.0)
    record = validate.smoke_reference(tiny_engine, emulating="cpu")
    assert record["ok"] and record["runtime"] == "onnxruntime", record
    assert record["output_ids"] == reference["output_ids"][:validate.ORT_SMOKE_TOKENS]
    assert "fp32 reference weights need" in record["note"] and record["lowering"].startswith("onnxruntime-cpu")


def test_smoke_run_is_skipped_when_neither_runtime_fits(tiny_engine, monkeypatch):
    monkeypatch.setattr(validate, "REFERENCE_MEMORY_FRACTION", 0.0)
    monkeypatch.setattr(validate, "ORT_MEMORY_FRACTION", 0.0)
    record = validate.smoke_reference(tiny_engine, emulating="cpu")
    assert not record["ok"] and record["note"].startswith("skipped: ") and "ONNX Runtime cannot take it" in record["note"]
    assert "output_ids" not in record
