"""ONNX graph pieces: the network definition TensorRT (and ONNX Runtime) imports."""
