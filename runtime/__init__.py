"""Executing a network definition (network.json): the reference runtime (plugins.reference ops, CPU or GPU), its
KV cache and generation loop, and the devices this machine has.

Public API: Runtime (runtime.api), SamplingParams, GenerationResult, TokenEvent, ReferenceModel, KVCache,
Scheduler and Request (runtime.scheduler: in-flight batching).
"""

from runtime.api import Runtime, RuntimeLoadError  # noqa: F401
from runtime.generate import GenerationResult, TokenEvent  # noqa: F401
from runtime.kv_cache import KVCache, kv_cache_bytes  # noqa: F401
from runtime.model import ReferenceModel, WeightError  # noqa: F401
from runtime.sampling import SamplingParams  # noqa: F401
from runtime.scheduler import Request, Scheduler  # noqa: F401
