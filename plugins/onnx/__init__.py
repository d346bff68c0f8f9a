"""ONNX export of the network definition: one op family per module, the graph TensorRT imports and ONNX
Runtime runs on CPU. Entry point: plugins.onnx.export.export_onnx; linear emitters per quant format in
plugins.onnx.linear. Nothing here is imported by plugins.reference or the reference runtime."""
