"""The benchmark's variants: named config overrides on top of ``configs/train.yaml``, read from
``configs/benchmarks/acdc_variants.yaml``, and the folder names of their runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqseg_bundle.benchmarks.paths import SPEC_DIR
from vqseg_bundle.benchmarks.protocols import Protocol
from vqseg_bundle.benchmarks.spec import check_keys, compose, read_spec, section

VARIANTS_FILE = SPEC_DIR / "acdc_variants.yaml"
#: the value that stands for the protocol's foundation model (``Protocol.fm_name``)
PFA_MARKER = "@PFA"


def load_variants(path: Path = VARIANTS_FILE) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]]:
    """The variants of ``path`` and its default selection.

    Returns:
        ``({name: {"description": str, "overrides": dict}}, default_variants)``, variants in file order, every
        ``base`` resolved.

    Raises:
        ValueError: an entry lacks its description or has unknown keys, a ``base`` name is unknown or circular, a
            fragment and a variant share a name, or a default variant is not a variant.
    """
    data = read_spec(path, ("fragments", "variants", "default_variants"))
    fragments = section(data, "fragments", path)
    entries = section(data, "variants", path)
    shared = sorted(set(fragments) & set(entries))
    if shared:
        raise ValueError(f"{path}: names used by both a fragment and a variant: {shared}")
    keys = ("description", "base", "overrides")
    for name, fragment in fragments.items():
        check_keys(f"{path}: fragment {name!r}", fragment, keys, ())
    bases = {**fragments, **entries}
    variants: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        where = f"{path}: variant {name!r}"
        check_keys(where, entry, keys, ("description",))
        if not isinstance(entry["description"], str) or not entry["description"].strip():
            raise ValueError(f"{where}: 'description' must be a non-empty string")
        variants[name] = {"description": entry["description"], "overrides": compose(where, entry, bases)}
    defaults = tuple(data.get("default_variants") or ())
    unknown = [v for v in defaults if v not in variants]
    if unknown:
        raise ValueError(f"{path}: default_variants names unknown variants {unknown}")
    return variants, defaults


VARIANTS, DEFAULT_VARIANTS = load_variants()


def variant_overrides(variant: str, protocol: Protocol) -> dict[str, Any]:
    """The config overrides of ``variant`` under ``protocol`` (``"@PFA"`` becomes the protocol's FM)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    out = {}
    for key, value in VARIANTS[variant]["overrides"].items():
        out[key] = protocol.fm_name if value == PFA_MARKER else value
    return out


def run_name(variant: str, seed: int) -> str:
    """Folder name of one run: the variant for seed 0, ``<variant>_seed<N>`` for other seeds."""
    return variant if int(seed) == 0 else f"{variant}_seed{int(seed)}"


def variant_of(name: str) -> tuple[str, int]:
    """Inverse of :func:`run_name`: ``(variant, seed)``."""
    base, sep, seed = name.rpartition("_seed")
    if sep and seed.isdigit() and base in VARIANTS:
        return base, int(seed)
    return name, 0
