"""One error type and one vocabulary for bad parameters, in sim and cifar.

Every invalid value stops with a ConfigError (a ValueError) whose message names the
parameter, its value and the allowed range; the command lines print it on one line and
exit with status 2.
"""
from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """An invalid configuration value; the message names the parameter."""


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{name}={value!r} is invalid: allowed {allowed}")


def _check_int(name, value, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, "an integer" + (f" >= {lo}" if lo is not None else ""))
    if lo is not None and value < lo:
        _fail(name, value, f"integers >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and value > hi:
        _fail(name, value, f"integers <= {hi}" + (f" and >= {lo}" if lo is not None else ""))


def _check_real(name, value, lo=None, hi=None, lo_open=False, hi_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(name, value, "a finite real number")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else repr(lo)
        hi_s = "inf" if hi is None else repr(hi)
        _fail(name, value, f"values in {left}{lo_s}, {hi_s}{right}")


def _check_choice(name, value, choices):
    if value not in choices:
        _fail(name, value, "one of " + ", ".join(repr(c) for c in choices))


# public names for the other packages (cifar) that should not reach for underscores
check_int, check_real, check_choice, fail = _check_int, _check_real, _check_choice, _fail
