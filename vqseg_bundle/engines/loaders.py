"""Endless iteration over a finite data loader, one pass after another."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["InfiniteLoader"]


class InfiniteLoader:
    """Cycle over ``loader`` forever, starting a new pass (a new shuffle) each time it is exhausted.

    The labeled and unlabeled loaders of a semi-supervised step have different lengths; each is
    wrapped in its own ``InfiniteLoader`` and so cycles on its own. Before each pass the
    sampler's ``set_epoch(pass_index)`` is called when it has one (``DistributedSampler``), so every
    pass is shuffled differently and identically on all ranks (ignite's own re-iteration of an
    exhausted loader would repeat the same distributed order within one trainer epoch).

    The iterable has no ``len``: give the trainer an explicit ``epoch_length``.
    """

    def __init__(self, loader: Iterable, start_pass: int = 0) -> None:
        """
        Args:
            loader: a finite iterable (usually a ``torch.utils.data.DataLoader``) yielding batches.
            start_pass: index of the first pass (passed to ``sampler.set_epoch``).
        """
        if not isinstance(loader, Iterable):
            raise ValueError(f"loader must be iterable, got {type(loader).__name__}")
        if start_pass < 0:
            raise ValueError(f"start_pass must be >= 0, got {start_pass}")
        try:
            n = len(loader)  # type: ignore[arg-type]
        except TypeError:
            n = None
        if n == 0:
            raise ValueError(
                "InfiniteLoader: the loader yields no batch: the dataset is empty or has fewer items than "
                "batch_size with drop_last=True; lower the batch size or add data"
            )
        self.loader = loader
        self.passes = int(start_pass)

    @property
    def sampler(self) -> Any:
        """The wrapped loader's sampler (``None`` when it has none)."""
        return getattr(self.loader, "sampler", None)

    def __iter__(self) -> Iterator:
        while True:
            set_epoch = getattr(self.sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.passes)
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            self.passes += 1
            if empty:
                raise ValueError(
                    "InfiniteLoader: the wrapped loader yielded no batch (empty dataset, or fewer items than "
                    "batch_size with drop_last=True)"
                )
