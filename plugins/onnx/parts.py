"""A minimal ONNX graph under construction: nodes and initializers with unique names.

The quantized-linear emitters (plugins/onnx/quant.py) write through this interface, `node()` and
`const()`, so any exporter that offers the same two methods can host them.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Custom-op domain of TensorRT's ONNX parser (TRT_FP4DynamicQuantize and friends).
TRT_DOMAIN = "trt"
OPSET = 23


class GraphParts:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._names: set[str] = set()
        self._counter = itertools.count()

    def fresh(self, hint: str) -> str:
        name = hint
        while name in self._names:
            name = f"{hint}_{next(self._counter)}"
        self._names.add(name)
        return name

    def node(self, op_type: str, inputs: list[str], n_outputs: int = 1, *, name: str | None = None,
             domain: str = "", **attrs) -> list[str]:
        """Add a node; returns its output names (fresh, derived from `name` or the op type)."""
        base = self.fresh(name or op_type)
        outputs = [base if i == 0 else self.fresh(f"{base}_out{i}") for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=base, domain=domain, **attrs))
        return outputs

    def const(self, hint: str, value) -> str:
        """Add an initializer: a numpy array or a prepared TensorProto (its name is replaced)."""
        name = self.fresh(hint)
        if isinstance(value, TensorProto):
            t = TensorProto()
            t.CopyFrom(value)
            t.name = name
        else:
            t = numpy_helper.from_array(np.asarray(value), name)
        self.initializers.append(t)
        return name

    def model(self, inputs: list, outputs: list, name: str = "graph") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(TRT_DOMAIN, 1)])
        m.ir_version = 10
        return m
