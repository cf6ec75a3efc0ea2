"""Whether this machine has a fast bf16 path, for the ``"auto"`` precision switches of ``configs/train.yaml``.

bf16 autocast pays on a CPU only where the CPU computes bf16 natively (AVX-512 BF16 or AMX tiles): there oneDNN
runs bf16 convolutions and matmuls at up to twice the fp32 rate. Elsewhere bf16 is emulated (converted to fp32 and
back) and slower than plain fp32, so ``"auto"`` means fp32 there. The flags are read from ``/proc/cpuinfo``
(Linux); no other platform is detected (``"auto"`` gives fp32 there; ``True`` forces bf16).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

__all__ = ["NATIVE_BF16_FLAGS", "cpu_has_native_bf16", "emulated_bf16_warning", "resolve_switch"]

logger = logging.getLogger(__name__)

#: /proc/cpuinfo flags of native bf16 arithmetic (AVX-512 BF16 dot products, AMX bf16 tiles)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the first ``flags`` line of ``cpuinfo`` names one of :data:`NATIVE_BF16_FLAGS`; False when the
    file is absent or unreadable (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    return False


def resolve_switch(value: bool | str, device: torch.device | str) -> bool:
    """A precision / memory-format switch of ``configs/train.yaml``: ``True`` / ``False`` as given; ``"auto"``:
    on in the fast CPU path (``device`` is a CPU with native bf16, :func:`cpu_has_native_bf16`), off elsewhere
    (GPUs keep fp32 unless asked: their bf16 accuracy has not been measured here).

    Raises:
        ValueError: ``value`` is neither a bool nor ``"auto"``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() == "auto":
        return torch.device(device).type == "cpu" and cpu_has_native_bf16()
    raise ValueError(f"a precision switch must be true, false or 'auto', got {value!r}")


def emulated_bf16_warning(amp: bool, amp_dtype: str, device: torch.device | str) -> str | None:
    """The warning to log when bf16 autocast is forced on a CPU that emulates bf16 (no :data:`NATIVE_BF16_FLAGS`):
    there every step is several times slower than fp32 (measured on a 2-core AVX2 EPYC: 4.3 s against about 0.3 s for
    an EfficientNet-Lite0 labeled_only step). ``None`` when autocast is off, not bf16, not on a CPU, or the CPU is native.
    The message is also logged (once per call) under this module's logger."""
    if not amp or amp_dtype != "bfloat16" or torch.device(device).type != "cpu" or cpu_has_native_bf16():
        return None
    message = (
        "amp with amp_dtype bfloat16 on a CPU without native bf16 (/proc/cpuinfo names none of "
        f"{', '.join(NATIVE_BF16_FLAGS)}): bf16 is emulated there and a step is several times slower than fp32; "
        "use --amp auto (fp32 on this CPU) or --amp False"
    )
    logger.warning(message)
    return message
