"""The declared facts every other package builds on: registries (models, GPUs, quant formats, serving
profiles), per-SM kernel capabilities, the network definition (network.json), canonical tensor names and
shapes, parameter counts, the resolved build target and the engine manifest. Pure Python: imports no
framework and nothing else of this project."""

__version__ = "0.1.0"
