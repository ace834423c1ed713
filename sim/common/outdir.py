"""Output folders that never mix two runs: one rule for every command that writes a run.

`prepare_out_dir(out, kind, config, resume=..., overwrite=...)` is called before anything
is written. A folder that does not exist (or is empty) is created and marked with
run.json ({"kind": ..., "config": ...}). A folder that already holds a run is refused,
with a message naming the folder and the flag to use, unless

- resume=True and it holds a run of the same kind and the same config: its content is kept
  (the caller continues the run; returns True);
- overwrite=True: its content is removed first. Only a folder that looks like a run (it has
  run.json, or one of the caller's `run_files`) is cleared: a folder of other files is never
  deleted, whatever the flags.

A path that exists and is not a folder is refused. Every refusal is a ConfigError (the
command lines print it on one line, exit status 2) raised before anything is written.
cifar uses the same helper for its run folders.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .files import atomic_write_json, jsonable
from .overrides import flatten
from .validation import ConfigError

MARKER = "run.json"


def _normalise(config) -> dict:
    return json.loads(json.dumps(config, default=jsonable))


def read_marker(out: Path) -> dict | None:
    """The run.json of a run folder, or None (absent or unreadable)."""
    try:
        doc = json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "kind" in doc and "config" in doc else None


def _differences(old: dict, new: dict, limit: int = 3) -> str:
    a, b = flatten(old) if isinstance(old, dict) else {}, flatten(new) if isinstance(new, dict) else {}
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    parts = [f"{k}: {b.get(k, '<absent>')!r} now, {a.get(k, '<absent>')!r} there" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"{len(keys) - limit} more")
    return "; ".join(parts)


def prepare_out_dir(out, kind: str, config, *, resume: bool = False, overwrite: bool = False,
                    run_files: tuple = ()) -> bool:
    """Check (and create or clear) the output folder of a run; True when resuming it.

    kind: what writes the folder, e.g. 'sim train' (named in the messages). config: the
    run's full config (JSON-able): resume continues only a run of equal config.
    run_files: names whose presence marks a folder written before run.json existed.
    """
    out = Path(out)
    config = _normalise(config)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: --resume continues the run in the "
                          "folder, --overwrite deletes it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is invalid: it is a file; allowed a folder (new, empty or of a run)")
    content = sorted(out.iterdir()) if out.is_dir() else []
    if content:
        marker = read_marker(out)
        is_run = marker is not None or any((out / n).exists() for n in run_files)
        same = marker is not None and marker["kind"] == kind and marker["config"] == config
        if overwrite:
            if not is_run:
                raise ConfigError(f"--out {str(out)!r} holds files that are not a run (no {MARKER}): not "
                                  "cleared; choose another --out or remove them yourself")
            for p in content:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        elif same and resume:
            return True
        elif same:
            raise ConfigError(f"--out {str(out)!r} already holds a {kind} run of this config: add --resume to "
                              "continue it or --overwrite to start it again")
        else:
            if marker is None:
                what = "a run written before run.json existed" if is_run else "other files"
            elif marker["kind"] != kind:
                what = f"a {marker['kind']} run"
            else:
                what = f"a {kind} run of another config ({_differences(marker['config'], config)})"
            hint = ("--resume continues only a run of the same config; " if resume else "")
            raise ConfigError(f"--out {str(out)!r} holds {what}: {hint}choose another --out"
                              + (", or add --overwrite to clear it" if is_run else ""))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, {"kind": kind, "config": config})
    return False
