"""The environment record of a benchmark run: versions, CPU / GPU, git commit, and a short machine label."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from vqseg_bundle.benchmarks.paths import REPO


def environment() -> dict[str, Any]:
    """Versions, CPU / GPU names, core count and the git commit the benchmark ran with."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "cpu": _cpu_name(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for mod in ("monai", "ignite", "timm"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional packages
            info[mod] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
        info["git"] = commit.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    except OSError:  # pragma: no cover - git missing
        info["git"] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_label(env: dict[str, Any]) -> str:
    """Short machine name for the report, e.g. ``CPU-2c, 2 cores, no GPU``."""
    if env.get("gpu"):
        return f"{env['gpu']}, {env['cpu_cores']} CPU cores"
    return f"CPU-{env['cpu_cores']}c, {env['cpu_cores']} cores, no GPU"
