"""Run metadata: package versions and the git commit of the code that produced a result."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

# the repository root (sim/common/meta.py -> sim/common -> sim -> root)
ROOT = Path(__file__).resolve().parents[2]


def _git(args: list[str], cwd, timeout: float = 10) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never take the index lock
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def code_version() -> str | None:
    """The git commit of the checkout sim runs from ('+dirty' if sim/ has changes), or None."""
    try:
        head = _git(["rev-parse", "--short", "HEAD"], ROOT)
        if head.returncode != 0:
            return None
        dirty = _git(["status", "--porcelain", "--", "sim"], ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def git_commit(cwd=None) -> dict:
    """{'commit': HEAD or None, 'dirty': bool or None} of the checkout (read-only git calls)."""
    cwd = cwd or ROOT
    try:
        head = _git(["rev-parse", "HEAD"], cwd)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        st = _git(["status", "--porcelain", "--untracked-files=no"], cwd, timeout=30)
        return {"commit": head.stdout.strip(), "dirty": bool(st.stdout.strip()) if st.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    """Versions of Python and the numerical packages, the machine, and sim's commit."""
    import numba
    import numpy as np
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "scipy": scipy.__version__, "machine": platform.machine(), "sim_commit": code_version()}
