"""Orientation robustness: one trained model scored on the validation volumes in each in-plane dihedral orientation.

A model that depends on a header convention loses Dice when the same anatomy reaches it turned or mirrored
(a flipped header that swaps both in-plane axes is a half turn). :func:`score_dihedral` runs a built MONAI
evaluator (configs/train.yaml + configs/evaluate.yaml: the bundle's own inferer, post-processing and metrics)
once per transform of :data:`~vqseg_bundle.transforms.dihedral.DIHEDRAL_TRANSFORMS`, with image and label of
every validation volume transformed together in the in-plane axes, and reports the mean Dice of each and the
worst drop from the identity. ``scripts/benchmark_dihedral.py`` is its command line.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.engines import Evaluator
from vqseg_bundle.transforms.dihedral import DIHEDRAL_TRANSFORMS, DihedralTransform, in_plane_dims

__all__ = [
    "in_plane_dims",
    "DihedralItems",
    "score_dihedral",
    "worst_drop",
    "inference_seconds_per_volume",
    "correction_time_ratio",
]


class DihedralItems:
    """A dataset transform: ``image`` and ``label`` of an item turned / mirrored in their in-plane axes.

    The metadata (affine, spacing) of the input is dropped on purpose: it describes the untransformed grid, so
    the distances the evaluation handlers derive from it would be wrong (Dice does not use it).
    """

    def __init__(self, transform: DihedralTransform, slice_axis: int = -1, keys: Sequence[str] = ("image", "label")):
        self.transform, self.slice_axis, self.keys = transform, slice_axis, tuple(keys)

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(item)
        for key in self.keys:
            x = torch.as_tensor(item[key])
            x = x.as_tensor() if hasattr(x, "as_tensor") else x
            out[key] = self.transform.apply(x, in_plane_dims(self.slice_axis, x.ndim - 1)).contiguous()
        return out


def score_dihedral(
    evaluator: Evaluator,
    items: Sequence[Mapping[str, Any]],
    slice_axis: int = -1,
    transforms: Sequence[DihedralTransform] = DIHEDRAL_TRANSFORMS,
    metric: str = "val_mean_dice",
) -> list[dict[str, Any]]:
    """Run ``evaluator`` on ``items`` once per transform.

    Args:
        evaluator: a MONAI evaluator whose data loader yields the validation items (its loader is replaced here
            by one over the transformed items: batch size 1, no workers).
        items: validation items ``{"image": (1, H, W, D), "label": (1, H, W, D), ...}`` (or 2D ``(1, H, W)``).
        slice_axis: the spatial axis the 2D network slices along (train.yaml ``slice_axis``).
        transforms: the orientations to score (default: all 8, identity first).
        metric: the evaluator's metric to report (``engine.state.metrics`` key); the per-class
            ``val_dice_<class>`` metrics are reported as well.

    Returns:
        one record per transform: ``{"transform": name, "quarter_turns", "mirrored", "mean_dice", "class_dice":
        {name: value}, "seconds": evaluation wall time, "seconds_per_volume", "volumes_turned_back" and
        "turned_back": {transform found: volumes} when the evaluator's inferer corrects orientation}``.

    Raises:
        ValueError: for no items, or an evaluator without ``metric``.
    """
    if not items:
        raise ValueError("no validation items to score")
    records = []
    for t in transforms:
        evaluator.data_loader = DataLoader(
            Dataset(list(items), transform=DihedralItems(t, slice_axis)), batch_size=1, shuffle=False, num_workers=0
        )
        evaluator.state.epoch_length = len(items)  # MONAI sizes the epoch from the loader given at construction
        decisions = getattr(evaluator.inferer, "decisions", None)
        seen = len(decisions) if decisions is not None else 0
        start = time.perf_counter()
        evaluator.run()
        seconds = time.perf_counter() - start
        # an orientation-correcting inferer (vqseg_bundle.inferers.OrientationCorrectingInferer) says what it did
        turned = [d for d in decisions[seen:] if d.get("corrected")] if decisions is not None else []
        metrics = dict(evaluator.state.metrics)
        if metric not in metrics:
            raise ValueError(f"the evaluator reports no {metric!r} (it has {sorted(metrics)})")
        records.append(
            {
                "transform": t.name,
                "quarter_turns": t.quarter_turns,
                "mirrored": t.mirrored,
                "mean_dice": float(metrics[metric]),
                "class_dice": {
                    k[len("val_dice_") :]: float(v) for k, v in metrics.items() if k.startswith("val_dice_")
                },
                "seconds": round(seconds, 2),
                "seconds_per_volume": round(seconds / len(items), 4),
                "volumes_turned_back": len(turned),
                "turned_back": dict(sorted(Counter(d["transform"] for d in turned).items())),
            }
        )
    return records


def worst_drop(records: Sequence[Mapping[str, Any]]) -> tuple[str, float]:
    """``(name, points)``: the transform whose mean Dice is lowest and its drop from the identity's, in Dice points
    (100 x the difference of the fractions; 0 when no transform is below the identity).

    Raises:
        ValueError: when ``records`` has no identity record.
    """
    identity = next((r for r in records if r["transform"] == "identity"), None)
    if identity is None:
        raise ValueError("the records hold no identity transform to compare with")
    worst = min(records, key=lambda r: r["mean_dice"])
    return worst["transform"], max(0.0, 100.0 * (identity["mean_dice"] - worst["mean_dice"]))


def inference_seconds_per_volume(evaluator: Evaluator, items: Sequence[Mapping[str, Any]], repeats: int = 1) -> float:
    """Mean wall time of the evaluator's inferer (network and test-time augmentation, no metrics) per volume.

    Args:
        evaluator: a MONAI evaluator with ``inferer`` and ``network`` (evaluation mode is set here).
        items: validation items ``{"image": (1, H, W, D), ...}``; each is predicted ``repeats`` times.

    Raises:
        ValueError: for no items.
    """
    if not items:
        raise ValueError("no validation items to time")
    evaluator.network.eval()
    device = next(evaluator.network.parameters()).device
    total = 0.0
    with torch.no_grad():
        for item in items:
            image = torch.as_tensor(item["image"])[None].to(device)
            for _ in range(repeats):
                start = time.perf_counter()
                evaluator.inferer(image, evaluator.network)
                total += time.perf_counter() - start
    return total / (len(items) * repeats)


def correction_time_ratio(
    evaluator: Evaluator, items: Sequence[Mapping[str, Any]], rounds: int = 2
) -> dict[str, float]:
    """Inference time per volume with the evaluator's orientation-correcting inferer and with the inferer it wraps
    alone, measured in turns (``rounds`` each, alternating, so that both see the same machine load).

    Args:
        evaluator: a MONAI evaluator whose ``inferer`` wraps another as ``inferer.inferer``
            (:class:`vqseg_bundle.inferers.OrientationCorrectingInferer`).
        items: validation items ``{"image": (1, H, W, D), ...}``.

    Returns:
        ``{"with_correction", "without_correction"}`` (seconds per volume) and ``"ratio"`` (with / without).

    Raises:
        ValueError: an evaluator whose inferer wraps none.
    """
    corrector = evaluator.inferer
    plain = getattr(corrector, "inferer", None)
    if plain is None:
        raise ValueError(f"the evaluator's inferer {corrector!r} wraps no other inferer")
    times: dict[str, list[float]] = {"with_correction": [], "without_correction": []}
    try:
        for _ in range(int(rounds)):
            for key, inferer in (("without_correction", plain), ("with_correction", corrector)):
                evaluator.inferer = inferer
                times[key].append(inference_seconds_per_volume(evaluator, items))
    finally:
        evaluator.inferer = corrector
    out = {k: sum(v) / len(v) for k, v in times.items()}
    out["ratio"] = out["with_correction"] / out["without_correction"]
    return out
