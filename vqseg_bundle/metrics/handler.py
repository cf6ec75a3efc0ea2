"""An ignite handler that scores every case of an evaluator run and writes per-case and summary CSVs.

MONAI's metric handlers reduce to one number per metric, take no voxel spacing for the distance
metrics, and drop empty-mask NaNs from the mean; this handler keeps every case, computes voxel and
millimetre distances, applies the explicit empty-mask policy of
:mod:`vqseg_bundle.metrics.case_metrics` and reports the empty / missed counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from vqseg_bundle.metrics import report
from vqseg_bundle.metrics.case_metrics import METRIC_NAMES, CaseClassMetrics, compute_case_metrics, resolve_class_names

__all__ = ["CaseMetricsHandler", "spacing_from_meta"]

logger = logging.getLogger(__name__)


def spacing_from_meta(x: Any) -> list[float] | None:
    """Voxel spacing (per spatial axis) from a ``MetaTensor`` read from a file, else ``None``.

    Only tensors whose metadata names a source file (``filename_or_obj``) are trusted: a
    ``MetaTensor`` built in memory carries a default identity affine that says nothing about the
    real spacing.
    """
    if not isinstance(x, MetaTensor) or not x.meta.get("filename_or_obj"):
        return None
    affine = x.affine.detach().cpu().double()
    if affine.ndim == 3:  # batched
        affine = affine[0]
    r = affine.shape[0] - 1
    spacing = torch.linalg.norm(affine[:r, :r], dim=0).tolist()
    return [float(s) for s in spacing]


class CaseMetricsHandler:
    """Score each case of an evaluator epoch; at its end write CSVs and print a summary table.

    Reads, per iteration, the decollated ``engine.state.output`` items (``pred_key`` and
    ``label_key``: label maps ``(1, *S)`` or one-hot / scores ``(K, *S)``, see
    :func:`~vqseg_bundle.metrics.compute_case_metrics`) and ``engine.state.batch`` items for the
    case name (``name_key``, else the source file name, else a running index) and the spacing
    (``spacing_key`` entry, else the label's file affine when ``spacing_from_affine``).

    At ``EPOCH_COMPLETED`` (after gathering cases from all ranks, duplicates of a padded
    distributed sampler removed by case name), rank 0 writes ``<output_dir>/<case_csv>`` and
    ``<output_dir>/<summary_csv>`` when ``output_dir`` is set, and prints the table. On every rank
    the overall means are put into ``engine.state.metrics`` as ``<metric_prefix><metric>`` (e.g.
    ``case_dice``, ``case_hd95_vox``) and the records / summary are kept on ``self.records`` and
    ``self.summary``.

    Args:
        num_classes: ``K``, background included.
        output_dir: folder of the CSV files; ``None`` writes nothing.
        class_names: ``K`` names, or ``K - 1`` without the background.
        include_background: also score class 0.
        empty_distance, penalty: the empty-mask policy, see :mod:`vqseg_bundle.metrics.case_metrics`.
        pred_key, label_key: keys of the output items.
        name_key, spacing_key: keys of the batch items (``spacing_key=None`` to ignore).
        spacing_from_affine: derive the spacing from the label's (or prediction's) file affine.
        metric_prefix: prefix of the ``engine.state.metrics`` entries.
        case_csv, summary_csv: file names.
        print_table: print the summary table at the end of the epoch (rank 0).
        output_transform: applied to ``engine.state.output`` before reading it.
    """

    def __init__(
        self,
        num_classes: int,
        output_dir: str | os.PathLike | None = None,
        class_names: Sequence[str] | None = None,
        include_background: bool = False,
        empty_distance: str = "nan",
        penalty: str | float = "diagonal",
        pred_key: str = "pred",
        label_key: str = "label",
        name_key: str = "name",
        spacing_key: str | None = "spacing",
        spacing_from_affine: bool = True,
        metric_prefix: str = "case_",
        case_csv: str = "metrics_per_case.csv",
        summary_csv: str = "metrics_summary.csv",
        print_table: bool = True,
        output_transform: Callable[[Any], Any] = lambda x: x,
    ) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}.")
        self.num_classes = int(num_classes)
        self.output_dir = Path(output_dir) if output_dir else None
        self.class_names = resolve_class_names(class_names, self.num_classes)
        self.include_background = include_background
        self.empty_distance = empty_distance
        self.penalty = penalty
        self.pred_key, self.label_key = pred_key, label_key
        self.name_key, self.spacing_key = name_key, spacing_key
        self.spacing_from_affine = spacing_from_affine
        self.metric_prefix = metric_prefix
        self.case_csv, self.summary_csv = case_csv, summary_csv
        self.print_table = print_table
        self.output_transform = output_transform
        self.records: list[CaseClassMetrics] = []
        self.summary: list[dict[str, object]] = []
        self._count = 0
        # validate the policy once, early, instead of at the first iteration
        compute_case_metrics(
            torch.zeros(1, 2, 2, dtype=torch.long),
            torch.zeros(1, 2, 2, dtype=torch.long),
            self.num_classes,
            empty_distance=empty_distance,
            penalty=penalty,
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.records = []
        self.summary = []
        self._count = 0

    @staticmethod
    def _items(data: Any) -> list[Any]:
        if isinstance(data, Mapping):
            return decollate_batch(data, detach=True)
        if isinstance(data, (list, tuple)):
            return list(data)
        raise ValueError(f"CaseMetricsHandler expects a dict or a list of dicts, got {type(data).__name__}.")

    def _name(self, item: Mapping[str, Any], label: Any) -> str:
        name = item.get(self.name_key) if isinstance(item, Mapping) else None
        if name is None:
            for src in (label, item.get("image") if isinstance(item, Mapping) else None):
                if isinstance(src, MetaTensor) and src.meta.get("filename_or_obj"):
                    name = os.path.basename(str(src.meta["filename_or_obj"]).rstrip("/"))
                    break
        if name is None:
            name = f"case_{self._count:04d}"
        if isinstance(name, (list, tuple)):
            name = name[0]
        return str(name)

    def _spacing(self, item: Mapping[str, Any], label: Any, pred: Any) -> list[float] | None:
        if self.spacing_key is not None and isinstance(item, Mapping) and item.get(self.spacing_key) is not None:
            sp = item[self.spacing_key]
            sp = sp.tolist() if isinstance(sp, (torch.Tensor, np.ndarray)) else list(sp)
            return [float(s) for s in sp]
        if self.spacing_from_affine:
            return spacing_from_meta(label) or spacing_from_meta(pred)
        return None

    def iteration_completed(self, engine: Engine) -> None:
        outputs = self._items(self.output_transform(engine.state.output))
        batch = self._items(engine.state.batch) if engine.state.batch is not None else [{}] * len(outputs)
        if len(batch) != len(outputs):
            batch = [{}] * len(outputs)
        for out, item in zip(outputs, batch, strict=True):
            if not isinstance(out, Mapping) or out.get(self.label_key) is None or out.get(self.pred_key) is None:
                found = sorted(k for k, v in out.items() if v is not None) if isinstance(out, Mapping) else type(out)
                raise ValueError(
                    f"CaseMetricsHandler needs {self.pred_key!r} and {self.label_key!r} in the evaluator "
                    "output, "
                    f"got {found} (does the dataset provide labels?)."
                )
            pred, label = out[self.pred_key], out[self.label_key]
            merged = {**item, **{k: v for k, v in out.items() if k not in item}}
            spacing = self._spacing(merged, label, pred)
            if spacing is not None and len(spacing) != label.ndim - 1:
                spacing = spacing[: label.ndim - 1]
            self.records.extend(
                compute_case_metrics(
                    pred,
                    label,
                    self.num_classes,
                    case=self._name(merged, label),
                    class_names=self.class_names,
                    include_background=self.include_background,
                    spacing=spacing,
                    empty_distance=self.empty_distance,
                    penalty=self.penalty,
                )
            )
            self._count += 1

    def _gather(self) -> list[CaseClassMetrics]:
        records = self.records
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, [r.as_dict() for r in records])
            records = [CaseClassMetrics(**d) for part in gathered for d in part]
        seen: set[tuple[str, int]] = set()
        unique = []
        for r in records:
            if (r.case, r.class_index) not in seen:
                seen.add((r.case, r.class_index))
                unique.append(r)
        return unique

    def epoch_completed(self, engine: Engine) -> None:
        self.records = self._gather()
        self.summary = report.summarize(self.records)
        overall = next((r for r in self.summary if r["class_name"] == report.OVERALL), None)
        if overall is not None:
            for m in METRIC_NAMES:
                engine.state.metrics[f"{self.metric_prefix}{m}"] = overall[f"{m}_mean"]
        rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        if not rank0:
            return
        if self.output_dir is not None:
            case_path = report.write_case_csv(self.records, self.output_dir / self.case_csv)
            summary_path = report.write_summary_csv(self.summary, self.output_dir / self.summary_csv)
            logger.info("per-case metrics written to %s, summary to %s", case_path, summary_path)
        if self.print_table:
            print(
                f"Per-class metrics over {len({r.case for r in self.records})} cases:\n"
                + report.format_summary_table(self.summary)
            )
