"""The reference runtime: executes a network definition (network.json) with plugins.reference, CPU or GPU.

Public API: Runtime (runtime.engine), SamplingParams, GenerationResult, TokenEvent, ReferenceModel, KVCache,
Scheduler and Request (runtime.scheduler: in-flight batching).
"""

from runtime.engine import Runtime, RuntimeLoadError  # noqa: F401
from runtime.generate import GenerationResult, TokenEvent  # noqa: F401
from runtime.kv_cache import KVCache, kv_cache_bytes  # noqa: F401
from runtime.model import ReferenceModel, WeightError  # noqa: F401
from runtime.sampling import SamplingParams  # noqa: F401
from runtime.scheduler import Request, Scheduler  # noqa: F401
