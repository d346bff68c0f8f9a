"""The Triton model repository: the generator that writes one for an engine (write.py, templates/), the Triton
Python models it holds (triton_models/: preprocessing, tensorrt_llm, postprocessing, the BLS model and the
ensemble), and what those models run on (backends.py: the reference runtime's in-flight batcher, or TensorRT-LLM's
LLM API loaded through trtllm.py), Harmony chat rendering and the tokenizers."""
