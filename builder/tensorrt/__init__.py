"""TensorRT plans from the engine's ONNX graph.

targets.py: which builder serves which SM (a table). plan.py: parse the ONNX file with TensorRT's own
OnnxParser (errors reported by node), one optimization profile from the engine's limits, build a
strongly typed serialized plan: with TensorRT-RTX ahead of time on any machine (SM75-SM121), or with
the `tensorrt` package on a GPU box (SM90/SM100/SM103, `build-engine --validate DIR`). engine_dir.py:
the engine's `tensorrt/` folder and its engine.json section.
"""

from __future__ import annotations


class PlanBuildError(RuntimeError):
    """TensorRT refused the graph (parser errors by node) or the build failed."""
