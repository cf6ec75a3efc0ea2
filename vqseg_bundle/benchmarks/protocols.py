"""The benchmark's protocols: training schedules shared by every variant, read from
``configs/benchmarks/acdc_protocols.yaml``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqseg_bundle.benchmarks.paths import SPEC_DIR
from vqseg_bundle.benchmarks.spec import check_keys, compose, read_spec, section

PROTOCOLS_FILE = SPEC_DIR / "acdc_protocols.yaml"


@dataclass(frozen=True)
class Protocol:
    """One training schedule, identical for every variant run under it.

    Attributes:
        name: protocol key.
        description: one line for the report.
        config_files: training configs layered in this order (evaluate.yaml is appended for evaluation).
        image_size: network input size S (slices resized to S x S).
        iterations: total training iterations (one labeled + one unlabeled batch each).
        val_every: iterations between validations on the validation volumes (divides ``iterations``).
        batch_labeled, batch_unlabeled: batch sizes.
        fm_name: foundation model of the PFA variants under this protocol.
        threads: CPU threads per run (``num_threads`` and ``OMP_NUM_THREADS``); ``None`` leaves torch's default.
        overrides: further config overrides shared by every variant.
        notes: caveats printed under the protocol's tables.
    """

    name: str
    description: str
    config_files: tuple[str, ...]
    image_size: int
    iterations: int
    val_every: int
    batch_labeled: int
    batch_unlabeled: int
    fm_name: str = "efficientnet_lite0"
    threads: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def schedule_overrides(self) -> dict[str, Any]:
        """The config overrides that set this protocol's schedule (``epochs`` x ``iterations_per_epoch``)."""
        if self.iterations % self.val_every:
            raise ValueError(
                f"protocol {self.name!r}: iterations ({self.iterations}) must be a multiple of val_every "
                f"({self.val_every})"
            )
        return {
            "image_size": self.image_size,
            "epochs": self.iterations // self.val_every,
            "iterations_per_epoch": self.val_every,
            "val_interval": 1,
            "batch_size_labeled": self.batch_labeled,
            "batch_size_unlabeled": self.batch_unlabeled,
            **({"num_threads": self.threads} if self.threads else {}),
            **self.overrides,
        }


#: the Protocol fields a YAML entry may set (``name`` is the entry's key), and those it must set
_FIELDS = tuple(f.name for f in dataclasses.fields(Protocol) if f.name != "name")
_REQUIRED = tuple(
    f.name
    for f in dataclasses.fields(Protocol)
    if f.name != "name" and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
_INT_FIELDS = ("image_size", "iterations", "val_every", "batch_labeled", "batch_unlabeled")


def load_protocols(path: Path = PROTOCOLS_FILE) -> dict[str, Protocol]:
    """Every protocol of ``path``, in file order, its ``extends`` and ``base`` resolved and its schedule checked.

    Raises:
        ValueError: an entry has unknown or missing fields, a value of the wrong type, an unknown ``extends`` or
            ``base`` name, or ``iterations`` not a multiple of ``val_every``.
    """
    data = read_spec(path, ("fragments", "protocols"))
    fragments = section(data, "fragments", path)
    entries = section(data, "protocols", path)
    for name, fragment in fragments.items():
        check_keys(f"{path}: fragment {name!r}", fragment, ("description", "base", "overrides"), ())
    fields: dict[str, dict[str, Any]] = {}
    for name in entries:
        fields[name] = _fields(path, name, entries, fragments, ())
    protocols = {name: Protocol(name=name, **values) for name, values in fields.items()}
    for protocol in protocols.values():
        protocol.schedule_overrides()  # checks the schedule
    return protocols


def _fields(
    path: Path,
    name: str,
    entries: dict[str, dict[str, Any]],
    fragments: dict[str, dict[str, Any]],
    trail: tuple[str, ...],
) -> dict[str, Any]:
    """The Protocol fields of entry ``name``: those it sets over those of the protocol it ``extends``."""
    where = f"{path}: protocol {name!r}"
    entry = entries[name]
    check_keys(where, entry, (*_FIELDS, "base", "extends"), ())
    parent = entry.get("extends")
    if parent is None:
        values: dict[str, Any] = {}
    elif parent not in entries or parent in (*trail, name):
        raise ValueError(f"{where}: extends {parent!r}, which is not another protocol of the file")
    else:
        values = _fields(path, parent, entries, fragments, (*trail, name))
    values.update({k: v for k, v in entry.items() if k in _FIELDS and k != "overrides"})
    if "base" in entry or "overrides" in entry:
        values["overrides"] = compose(where, entry, fragments)
    missing = sorted(set(_REQUIRED) - set(values))
    if missing and not trail:
        raise ValueError(f"{where}: missing {missing}")
    if "config_files" in values:
        files = values["config_files"]
        if not isinstance(files, (list, tuple)) or not files or not all(isinstance(f, str) for f in files):
            raise ValueError(f"{where}: config_files must be a non-empty list of paths, got {files!r}")
        values["config_files"] = tuple(files)
    threads = values.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"{where}: threads must be a positive integer or absent, got {threads!r}")
    for key in _INT_FIELDS:
        if key in values and (not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1):
            raise ValueError(f"{where}: {key} must be a positive integer, got {values[key]!r}")
    return values


PROTOCOLS: dict[str, Protocol] = load_protocols()
