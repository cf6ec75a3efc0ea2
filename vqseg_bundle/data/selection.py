"""Choosing the labeled subset: always by patient, never by slice, reproducibly (list order)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from vqseg_bundle.data.integrity import patient_id_from_name

__all__ = ["parse_labeled", "cases_in_name", "ordered_patients", "first_patients"]

_CASES = re.compile(r"^labeled_(\d+)_cases$")


def parse_labeled(labeled: str | int) -> tuple[str, int | str | None]:
    """Interpret the ``labeled`` argument of the readers.

    Args:
        labeled: ``"all"`` (every training item labeled: the fully supervised reference),
            an int ``N`` or a digit string ``"N"`` (the first ``N`` patients in list order),
            ``"labeled_N_cases"`` (a list file of that name when the dataset has one, as ACDC's
            ``labeled_3_cases.list`` / ``labeled_7_cases.list``, otherwise the first ``N`` patients),
            or another list-file name (ACDC layout only).

    Returns:
        ``("all", None)``, ``("count", N)`` or ``("name", name)``; for ``"labeled_N_cases"`` the
        kind is ``"name"`` and the reader falls back to ``N`` patients when no list file exists.

    Raises:
        ValueError: for a bool, a non-positive count or an empty string.
    """
    if isinstance(labeled, bool) or not isinstance(labeled, (int, str)):
        raise ValueError(f"labeled must be 'all', a positive int or a split name, got {labeled!r}")
    if isinstance(labeled, int) or labeled.strip().isdigit():
        n = int(labeled)
        if n < 1:
            raise ValueError(f"labeled must be at least 1 patient, got {labeled!r}")
        return "count", n
    name = labeled.strip()
    if not name:
        raise ValueError("labeled must not be an empty string")
    if name.lower() == "all":
        return "all", None
    return "name", name


def cases_in_name(name: str) -> int | None:
    """``N`` for a name of the form ``labeled_N_cases``, otherwise ``None``."""
    match = _CASES.match(name)
    return int(match.group(1)) if match else None


def ordered_patients(names: Sequence[str]) -> list[str]:
    """Distinct patient ids of ``names`` in order of first appearance (see ``patient_id_from_name``)."""
    return list(dict.fromkeys(patient_id_from_name(n) for n in names))


def first_patients(names: Sequence[str], count: int, source: str) -> list[str]:
    """The first ``count`` patients of ``names`` in list order.

    Raises:
        ValueError: when fewer than ``count`` patients exist (naming ``source``).
    """
    patients = ordered_patients(names)
    if count > len(patients):
        raise ValueError(f"{source}: asked for {count} labeled patients but the training set has only {len(patients)}")
    return patients[:count]
