"""The ``python -m monai.bundle run`` command lines of one benchmark run (training, then evaluation)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vqseg_bundle.benchmarks.paths import REPO
from vqseg_bundle.benchmarks.protocols import Protocol
from vqseg_bundle.benchmarks.variants import variant_overrides


def cli_value(value: Any) -> str:
    """A config value as one command-line token that ``monai.bundle``'s fire parser reads back as ``value``.

    Booleans and ``None`` are spelled as Python literals (fire reads ``false`` as the string 'false').
    """
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return (
            json.dumps(value, separators=(",", ":"))
            .replace("true", "True")
            .replace("false", "False")
            .replace("null", "None")
        )
    raise ValueError(f"cannot pass override value {value!r} ({type(value).__name__}) on the command line")


def config_arg(files: Sequence[str]) -> str:
    """``--config_file`` value: one path, or a Python-literal list of paths (MONAI's layering syntax)."""
    return files[0] if len(files) == 1 else json.dumps(list(files), separators=(",", ":"))


def build_commands(
    protocol: Protocol,
    variant: str,
    labeled: int,
    dataset_dir: str,
    run_dir: Path,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """The training and evaluation command lines of one run.

    Returns:
        ``(train_cmd, eval_cmd)`` argument lists (run from the bundle root).
    """
    overrides: dict[str, Any] = {
        "bundle_root": str(REPO),
        "dataset_dir": dataset_dir,
        "labeled": f"labeled_{int(labeled)}_cases",
        "output_dir": str(run_dir),
        "ckpt_dir": str(run_dir / "models"),
        "data_cache_dir": str(run_dir.parents[2] / "demo_cache"),
        "seed": int(seed),
        "progress_bar": False,
        **protocol.schedule_overrides(),
        **variant_overrides(variant, protocol),
        **(extra or {}),
    }
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", cli_value(value)]
    base = [sys.executable, "-m", "monai.bundle", "run"]
    train = base + ["training", "--config_file", config_arg(protocol.config_files)] + args
    evaluate = base + [
        "--config_file",
        config_arg([*protocol.config_files, "configs/evaluate.yaml"]),
        *args,
        "--ckpt_path",
        str(run_dir / "models" / "model.pt"),
    ]
    return train, evaluate


def as_list(value: Any, name: str) -> list:
    """A command-line value as a list: a list / tuple as is, one int or string as a one-item list (``fire`` gives
    ``--seeds 0`` as an int and ``--seeds "[0, 1]"`` as a list).

    Raises:
        ValueError: for anything else, naming the flag.
    """
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, str)):
        return [value]
    raise ValueError(f"--{name} must be a value or a list, got {value!r}")


_TRUE_WORDS = ("true", "yes", "1")
_FALSE_WORDS = ("false", "no", "0")


def as_flag(value: Any, name: str) -> bool:
    """A command-line switch as a bool.

    Why: ``fire`` gives ``--report false`` as the string ``'false'``, which is truthy; only the Python spellings
    (``False``) become a bool. Both spellings (any case), ``yes`` / ``no`` and ``1`` / ``0`` are accepted here.

    Raises:
        ValueError: for anything else, naming the flag.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise ValueError(f"--{name} must be true or false, got {value!r}")
