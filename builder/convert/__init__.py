"""Checkpoint conversion: name tables per format, quirk functions, canonical loading and writing.

Public API (other packages call only these):
    load_canonical(src) -> CanonicalCheckpoint   (.config, .format, .names(), .get(name), .tensors())
    convert_checkpoint(src, dst, to, force=False, progress=True) -> Path
"""

from builder.convert.load import CanonicalCheckpoint, load_canonical  # noqa: F401


def convert_checkpoint(src, dst, to: str, force: bool = False, progress: bool = True, **kw):
    from builder.convert.convert import convert_checkpoint as _convert
    return _convert(src, dst, to, force=force, progress=progress, **kw)
