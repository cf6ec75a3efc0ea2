"""Reading the benchmark's YAML specifications and composing their override entries.

An entry (a fragment, a variant or a protocol) may name ``base`` entries whose config overrides come first, in
order, followed by its own ``overrides``; later ones win, as in Python's ``{**a, **b, **own}``, and a key keeps
the place it first had (so the command lines list the overrides in a stable order).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml


def read_spec(path: Path, sections: Collection[str]) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path``, which may hold only ``sections``.

    Raises:
        ValueError: the file is not a mapping or holds another top-level key.
    """
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with the keys {sorted(sections)}")
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}; expected some of {sorted(sections)}")
    return data


def section(data: Mapping[str, Any], key: str, where: Path) -> dict[str, dict[str, Any]]:
    """``data[key]``: a mapping of names to mappings (empty when absent)."""
    entries = data.get(key) or {}
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise ValueError(f"{where}: {key!r} must map names to mappings")
    return entries


def check_keys(where: str, entry: Mapping[str, Any], allowed: Collection[str], required: Collection[str]) -> None:
    """Raise ``ValueError`` naming ``where`` when ``entry`` lacks a ``required`` key or holds one not ``allowed``."""
    missing = sorted(set(required) - set(entry))
    unknown = sorted(set(entry) - set(allowed))
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(allowed)}")


def compose(where: str, entry: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The config overrides of ``entry``: those of its ``base`` entries (looked up in ``entries``), then its own.

    Raises:
        ValueError: a base name is unknown, bases form a cycle, or ``base`` / ``overrides`` have the wrong type.
    """
    return copy.deepcopy(_compose(where, entry, entries, ()))


def _compose(
    where: str, entry: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]], trail: tuple[str, ...]
) -> dict[str, Any]:
    bases = entry.get("base", [])
    own = entry.get("overrides", {})
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{where}: 'base' must be a list of names, got {bases!r}")
    if not isinstance(own, dict):
        raise ValueError(f"{where}: 'overrides' must be a mapping of config keys, got {own!r}")
    out: dict[str, Any] = {}
    for name in bases:
        if name not in entries:
            raise ValueError(f"{where}: unknown base {name!r}; expected one of {sorted(entries)}")
        if name in trail:
            raise ValueError(f"{where}: base {name!r} refers back to itself ({' -> '.join((*trail, name))})")
        out.update(_compose(where, entries[name], entries, (*trail, name)))
    out.update(own)
    return out
