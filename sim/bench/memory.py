"""Peak resident memory of an operation (Linux counters; None elsewhere)."""
from __future__ import annotations

import ctypes
import gc


def _rss_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


_libc = None


def _trim():
    """Collect garbage and give freed heap memory back to the OS, so RSS is a fair baseline."""
    global _libc
    gc.collect()
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak RSS above the RSS at entry (bytes), or None where Linux's counters are missing."""

    def __enter__(self):
        _trim()
        self.base = _rss_kb("VmRSS")
        self.ok = self.base >= 0 and _reset_peak()
        self.extra = None
        return self

    def __exit__(self, *exc):
        if self.ok:
            self.extra = max(0, _rss_kb("VmHWM") - self.base) * 1024
        return False
