"""ONNX export of the network definition: one op family per module, the graph TensorRT imports and ONNX
Runtime runs on CPU. Entry point: plugins.onnx.export.export_onnx (imports onnx lazily from here)."""
