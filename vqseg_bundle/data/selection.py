"""Choosing the labeled subset: always by patient, never by slice, reproducibly (list order)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from vqseg_bundle.data.acdc_layout import AcdcLayout, read_list
from vqseg_bundle.data.integrity import IntegrityReport, patient_id_from_name

__all__ = ["LabeledChoice", "choose_labeled", "parse_labeled", "cases_in_name", "ordered_patients", "first_patients"]

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


def first_patients(names: Sequence[str], count: int, source: str, seed: int | None = None) -> list[str]:
    """``count`` patients of ``names``: the first ones in list order, or drawn reproducibly.

    Args:
        names: item names (slices or volumes) in list order.
        count: number of patients.
        source: where ``names`` come from, for the error message.
        seed: ``None`` takes the first patients; an int draws them with ``numpy.random.default_rng(seed)``
            (the same seed gives the same patients).

    Returns:
        Patient ids in list order.

    Raises:
        ValueError: when fewer than ``count`` patients exist (naming ``source``).
    """
    patients = ordered_patients(names)
    if count > len(patients):
        raise ValueError(f"{source}: asked for {count} labeled patients but the training set has only {len(patients)}")
    if seed is None:
        return patients[:count]
    picked = set(np.random.default_rng(seed).permutation(len(patients))[:count].tolist())
    return [p for i, p in enumerate(patients) if i in picked]


class LabeledChoice(NamedTuple):
    """The labeled subset of a training list: its ``names`` and ``patients`` (both in list order) and a
    description of the ``rule`` that chose it (for the data summary)."""

    names: list[str]
    patients: list[str]
    rule: str


def choose_labeled(
    names: Sequence[str],
    labeled: str | int,
    source: str,
    list_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    dataset_kind: str = "this dataset",
    items: str | None = None,
) -> LabeledChoice:
    """The labeled subset of a training list, by patient (or by an explicit list file), reproducibly.

    Every reader and the ACDC converter choose their labeled subset here.

    Args:
        names: the training items (slice or volume names) in list order.
        labeled: see :func:`parse_labeled`. A name with a ``<name>.list`` file in ``list_dir`` (ACDC) takes the
            items listed there (when ``seed`` is ``None``); ``"labeled_N_cases"`` without one, or an int ``N``,
            takes ``N`` patients.
        source: where ``names`` come from (a list file, a ``dataset.json`` key), for messages and the rule.
        list_dir: folder of ``.list`` files (the ACDC layout), or ``None`` (no list files).
        seed: ``None`` takes the first ``N`` patients in list order; an int draws ``N`` patients with
            ``numpy.random.default_rng(seed)``.
        dataset_kind: what the dataset is (``"a dataset.json dataset"``, ``"an ACDC dataset"``), for messages.
        items: a short name of the list for the rule (``"'training'"``, ``"train_slices.list"``; default ``source``).

    Returns:
        :class:`LabeledChoice`.

    Raises:
        ValueError: for an unknown subset name or more patients than there are.
        DataIntegrityError: when a list file names items that are not in ``names``.
    """
    kind, value = parse_labeled(labeled)
    if kind == "all":
        return LabeledChoice(list(names), ordered_patients(names), f"all of {items or source}")
    if kind == "name":
        name = str(value)
        layout = AcdcLayout(list_dir) if list_dir is not None else None
        list_path = layout.list_file(name) if layout is not None else None
        if seed is None and list_path is not None and os.path.isfile(list_path):
            listed = set(read_list(list_path))
            unknown = sorted(listed - set(names))
            if unknown:
                report = IntegrityReport("the labeled subset")
                report.add(list_path, f"{len(unknown)} slice(s) not in {os.path.basename(source)}, e.g. {unknown[:3]}")
                report.raise_if_any()
            chosen = [n for n in names if n in listed]
            return LabeledChoice(chosen, ordered_patients(chosen), f"list file {os.path.basename(list_path)}")
        value = cases_in_name(name)
        if value is None:
            files = f", or one of the list files {layout.list_names()}" if layout is not None else ""
            missing = f" (no list file {list_path})" if list_path is not None else ""
            raise ValueError(
                f"labeled={name!r} is not understood for {dataset_kind} ({source}){missing}; expected 'all', a number "
                "of patients, "
                f"'labeled_<N>_cases'{files}"
            )
    patients = first_patients(names, int(value), source, seed)
    chosen_patients = set(patients)
    chosen = [n for n in names if patient_id_from_name(n) in chosen_patients]
    items = items or source
    rule = f"first {value} patient(s) of {items}" if seed is None else f"{value} patient(s) of {items}, seed {seed}"
    return LabeledChoice(chosen, patients, rule)
