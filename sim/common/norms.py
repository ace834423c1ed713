"""The norms of the threat models: their names and one check."""
from __future__ import annotations

from .validation import _fail

NORMS = ("l2", "linf")


def check_norm(norm, name: str = "norm") -> str:
    """norm if it is 'l2' or 'linf', else a ConfigError naming the parameter."""
    if norm not in NORMS:
        _fail(name, norm, ", ".join(repr(n) for n in NORMS))
    return norm
