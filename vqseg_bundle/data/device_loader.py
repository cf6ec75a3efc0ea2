"""Batches of an in-memory slice dataset sampled by tensor indexing on a device, with batched augmentation.

A replacement for ``DataLoader(dataset, shuffle=True, drop_last=True)`` + per-sample MONAI transforms
in the training hot loop: the slices (``InMemorySliceDataset.images`` / ``.labels``) are moved once
to ``device`` (the GPU when there is one), each pass draws one random permutation there, and a batch
is an ``index_select`` followed by a batched augmentation of the whole batch
(:mod:`vqseg_bundle.transforms.batched`). No worker processes, no per-sample Python work, no
host-device copy or synchronisation per step.

Written here because no library does this for MONAI dictionary batches; it is the iterable the
trainer's ``InfiniteLoader`` cycles over, like a ``DataLoader`` (one pass = ``len(loader)`` batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

__all__ = ["DeviceBatchLoader"]


class DeviceBatchLoader:
    """Shuffled batches of a tensor-backed dataset, built on ``device``.

    Items of one pass: ``{"image": float32 (B, C, S, S)}`` plus ``"label": int64 (B, 1, S, S)`` when the
    dataset holds labels, then passed through ``augmentation(batch, generator)`` when given.

    Randomness: the permutation of pass ``p`` comes from a generator seeded with ``seed + p`` (identical
    on every rank, so ranks split one permutation like ``DistributedSampler``); augmentation draws come
    from a second generator seeded with ``seed`` and the rank, and advance over the run.

    Example::

        loader = DeviceBatchLoader(splits.labeled, 12, BatchedLabeledAugment(), device="cuda")
        for batch in loader:   # one pass: len(loader) batches
            ...
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        augmentation: Callable[[dict, torch.Generator], dict] | None = None,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int | None = None,
        num_replicas: int | None = None,
    ) -> None:
        """
        Args:
            dataset: an object with ``images`` float ``(N, C, S0, S1)`` and optionally ``labels``
                ``(N, 1, S0, S1)`` integer tensors (``vqseg_bundle.data.InMemorySliceDataset``).
            batch_size: samples per batch (per rank).
            augmentation: ``(batch dict, generator) -> batch dict``, e.g.
                ``vqseg_bundle.transforms.batched.BatchedLabeledAugment``; ``None``: no augmentation.
            device: where the data is held and the batches are built.
            shuffle: a new random order every pass (otherwise the dataset order).
            drop_last: drop the last incomplete batch of a pass (as the training configs do).
            seed: base seed of the permutation and augmentation generators.
            rank, num_replicas: this process's shard of every pass (default: from an initialised
                ``torch.distributed`` process group, else ``0`` of ``1``).
        """
        images = getattr(dataset, "images", None)
        if not torch.is_tensor(images) or images.ndim != 4:
            raise ValueError(
                f"dataset must hold an `images` tensor (N, C, S0, S1) (an InMemorySliceDataset), got "
                f"{type(dataset).__name__} with images={type(images).__name__}"
                f"{tuple(images.shape) if torch.is_tensor(images) else ''}"
            )
        labels = getattr(dataset, "labels", None)
        if labels is not None and (
            not torch.is_tensor(labels) or labels.shape[0] != images.shape[0] or labels.shape[-2:] != images.shape[-2:]
        ):
            raise ValueError(
                f"dataset labels must be (N, 1, S0, S1) matching images {tuple(images.shape)}, got "
                f"{tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__}"
            )
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if augmentation is not None and not callable(augmentation):
            raise ValueError(f"augmentation must be callable or None, got {type(augmentation).__name__}")
        if num_replicas is None or rank is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
                rank = dist.get_rank() if rank is None else rank
            else:
                num_replicas = 1 if num_replicas is None else num_replicas
                rank = 0 if rank is None else rank
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.device = torch.device(device)
        self.images = images.to(self.device, torch.float32).contiguous()
        self.labels = labels.to(self.device).contiguous() if labels is not None else None
        self.batch_size = int(batch_size)
        self.augmentation = augmentation
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.rank, self.num_replicas = int(rank), int(num_replicas)
        self.epoch = 0
        self._perm_gen = torch.Generator(device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed + 7919 * self.rank + 1)
        n_rank = len(range(self.rank, self.images.shape[0], self.num_replicas))
        if len(self) == 0:
            raise ValueError(
                f"DeviceBatchLoader: {n_rank} slices for this rank but batch_size={self.batch_size} with "
                "drop_last=True: no batch; lower the batch size or add data"
            )

    def __len__(self) -> int:
        # every rank gets floor(N / replicas) samples (the remainder is dropped, so ranks stay in step)
        n = self.images.shape[0] // self.num_replicas
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of pass ``epoch`` (called by ``InfiniteLoader`` before each pass)."""
        self.epoch = int(epoch)

    @property
    def sampler(self) -> "DeviceBatchLoader":
        """``InfiniteLoader`` calls ``loader.sampler.set_epoch(pass)``: this loader is its own sampler."""
        return self

    def _order(self) -> torch.Tensor:
        n = self.images.shape[0]
        if not self.shuffle:
            order = torch.arange(n, device=self.device)
        else:
            self._perm_gen.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, device=self.device, generator=self._perm_gen)
        per_rank = n // self.num_replicas
        return order[self.rank : self.rank + per_rank * self.num_replicas : self.num_replicas]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order()
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = {"image": self.images.index_select(0, idx)}
            if self.labels is not None:
                batch["label"] = self.labels.index_select(0, idx).long()
            if self.augmentation is not None:
                batch = self.augmentation(batch, self.generator)
            yield batch
        self.epoch += 1  # a plain `for` over passes reshuffles even without set_epoch

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.images.shape[0]}, batch_size={self.batch_size}, device={self.device}, "
            f"labeled={self.labels is not None}, rank={self.rank}/{self.num_replicas})"
        )
