"""The plain network inside the wrappers a training run puts around it."""

from __future__ import annotations

import torch

__all__ = ["WRAPPER_TYPES", "unwrap_model"]

#: wrapper classes (by name, so that none of them has to be imported) and the attributes holding the wrapped module
WRAPPER_TYPES = ("DistributedDataParallel", "DataParallel", "OptimizedModule", "SemiSupervisedForward")
_INNER_ATTRIBUTES = ("module", "_orig_mod", "network")


def unwrap_model(module: torch.nn.Module) -> torch.nn.Module:
    """The plain network inside DDP / DataParallel, ``torch.compile`` and the trainer's ``SemiSupervisedForward``.

    Args:
        module: a network, or one of the wrappers of :data:`WRAPPER_TYPES` around it (nested in any order).

    Returns:
        The innermost module that is not such a wrapper (``module`` itself when it is none).
    """
    for attr in _INNER_ATTRIBUTES:
        inner = getattr(module, attr, None)
        if isinstance(inner, torch.nn.Module) and type(module).__name__ in WRAPPER_TYPES:
            return unwrap_model(inner)
    return module
