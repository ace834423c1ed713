"""`--set A.B=VALUE` overrides of nested config dicts, and dotted names of their fields."""
from __future__ import annotations

import json

from .validation import ConfigError


def parse_assignment(text: str) -> tuple[list[str], object]:
    """'data.d=512' -> (['data', 'd'], 512); values are read as JSON, else kept as strings."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected SECTION.FIELD=VALUE, e.g. data.d=512")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_sets(d: dict, sets: list[str]) -> dict:
    """Apply each `--set A.B=VALUE` to the nested dict d (in place; returned): only existing
    keys may be set, so a typo is an error naming the key, not a silently ignored field."""
    for text in sets:
        path, value = parse_assignment(text)
        node = d
        for key in path[:-1]:
            if key not in node or not isinstance(node[key], dict):
                raise ConfigError(f"--set {text!r}: unknown section {key!r}")
            node = node[key]
        if path[-1] not in node:
            raise ConfigError(f"--set {text!r}: unknown parameter {'.'.join(path)!r}")
        node[path[-1]] = value
    return d


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config dict -> {dotted name: value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_path(d: dict, path: str, value) -> None:
    """d['a']['b'] = value for path 'a.b' (the sections must exist)."""
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value
