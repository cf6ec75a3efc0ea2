"""A safe inference run: every input checked before anything is written, unique output names, no silent
overwrite, crash-safe segmentation files, the bad inputs listed at the end.

``configs/inference.yaml`` uses:

* :class:`InferenceInputs` as the data of its ``Dataset``: the list of inputs (a glob or a datalist, taken at
  parse time), of which :meth:`InferenceInputs.prepare` keeps the good ones before the evaluator runs:
  it checks that the output folder is writable, gives every input a unique output name (inputs with the
  same base name from different folders get their folder in the name), refuses to overwrite existing
  outputs unless ``overwrite``, and runs the preprocessing on every input once, so that an unreadable or
  truncated file, a 4D volume or non-finite voxels (:class:`CheckInputd`) is reported naming the file;
  :meth:`InferenceInputs.finish` writes the input -> output mapping to ``<output_dir>/segmentations.csv``,
  logs the bad inputs and raises :class:`InferenceInputError` (non-zero exit) when there were any.
* :class:`CheckInputd` in the preprocessing: dimensionality and the non-finite policy.
* :class:`SaveSegmentationd` as the writer: one atomic file per input, at its planned path, one log line each.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from vqseg_bundle.data.images2d import IMAGE_2D_SUFFIXES, is_image_2d
from vqseg_bundle.errors import describe
from vqseg_bundle.fileio import atomic_write_text, atomic_write_with, check_writable_dir
from vqseg_bundle.inferers.inputs import list_inference_inputs, require_inputs

__all__ = [
    "NONFINITE_POLICIES",
    "InferenceInputError",
    "InferenceInputs",
    "CheckInputd",
    "SaveSegmentationd",
    "output_names",
]

logger = logging.getLogger(__name__)

#: what inference does with NaN / Inf voxels: refuse the input, or replace them by the finite minimum
NONFINITE_POLICIES = ("error", "replace")
_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".gz", *IMAGE_2D_SUFFIXES)
MAPPING_CSV = "segmentations.csv"


class InferenceInputError(ValueError):
    """Some inputs of an inference run could not be segmented; the message lists each file and why."""


def _source_name(item: Mapping, key: str) -> str:
    path = item[key]
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)


def _stem(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    for ext in _EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def output_names(inputs: Sequence[str], postfix: str = "seg", ext: str | Sequence[str] = ".nii.gz") -> list[str]:
    """One unique output file name per input: ``<stem>_<postfix><ext>``; inputs sharing a stem get the folders
    that tell them apart (``site1/scan.nii.gz`` -> ``site1_scan_seg.nii.gz``), and a numeric suffix if still equal.
    ``ext``: one extension for all, or one per input."""
    exts = [ext] * len(inputs) if isinstance(ext, str) else list(ext)
    if len(exts) != len(inputs):
        raise ValueError(f"output_names: {len(exts)} extensions for {len(inputs)} inputs")
    stems = [_stem(p) for p in inputs]
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(stems):
        groups.setdefault(s, []).append(i)
    names = list(stems)
    for stem, idx in groups.items():
        if len(idx) < 2:
            continue
        parents = [os.path.dirname(os.path.abspath(inputs[i])) for i in idx]
        common = os.path.commonpath(parents)
        for i, parent in zip(idx, parents, strict=True):
            rel = os.path.relpath(parent, common)
            names[i] = stem if rel == "." else "_".join([*Path(rel).parts, stem])
    used: dict[str, int] = {}
    out = []
    for n in names:
        key = n.lower()
        used[key] = used.get(key, 0) + 1
        out.append(n if used[key] == 1 else f"{n}_{used[key]}")
    return [f"{n}_{postfix}{e}" for n, e in zip(out, exts, strict=True)]


class InferenceInputs(Sequence):
    """The inputs of an inference run (a ``Sequence`` of ``{"image": path, "output": path}`` items, the good ones
    once :meth:`prepare` ran); see the module docstring."""

    def __init__(
        self,
        input_glob: str | None = None,
        datalist: str | os.PathLike | None = None,
        datalist_key: str = "test",
        image_key: str = "image",
        output_key: str = "output",
    ) -> None:
        self.input_glob, self.datalist, self.image_key, self.output_key = input_glob, datalist, image_key, output_key
        self.items = list_inference_inputs(input_glob, datalist, datalist_key, image_key=image_key, allow_empty=True)
        self.good: list[dict] = list(self.items)
        self.bad: list[tuple[str, str]] = []
        self.output_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.good)

    def __getitem__(self, index):  # type: ignore[override]
        return self.good[index]

    def prepare(
        self,
        output_dir: str | os.PathLike,
        transform: Callable | None = None,
        overwrite: bool = False,
        postfix: str = "seg",
        ext: str = ".nii.gz",
        ext_2d: str = ".png",
    ) -> int:
        """Check the output folder and every input before anything is written; returns the number of good inputs.

        Outputs are named ``<stem>_<postfix><ext>``, those of 2D image inputs (PNG, JPEG, ...)
        ``<stem>_<postfix><ext_2d>`` (an image at the input's size; ``".nii.gz"`` for NIfTI).

        Raises:
            FileNotFoundError: no input at all.
            WriteError: the output folder is not writable.
            FileExistsError: planned outputs exist and ``overwrite`` is false (nothing is inferred).
            InferenceInputError: no input passed the checks (each file and why).
        """
        require_inputs(self.items, self.input_glob, self.datalist)
        self.output_dir = check_writable_dir(output_dir)
        sources = [_source_name(item, self.image_key) for item in self.items]
        names = output_names(sources, postfix, [ext_2d if is_image_2d(src) else ext for src in sources])
        for item, name in zip(self.items, names, strict=True):
            item[self.output_key] = str(self.output_dir / name)
        existing = [item[self.output_key] for item in self.items if os.path.exists(item[self.output_key])]
        if existing and not overwrite:
            shown = ", ".join(existing[:5]) + (f", ... ({len(existing) - 5} more)" if len(existing) > 5 else "")
            raise FileExistsError(
                f"{len(existing)} output file(s) already exist: {shown}. Pass --overwrite True to replace them, "
                "or another --output_dir."
            )
        good, self.bad = [], []
        for item, source in zip(self.items, sources, strict=True):
            if transform is not None:
                try:
                    transform(dict(item))
                except Exception as e:  # noqa: BLE001 - every failure is reported per file
                    message = describe(e)
                    if source not in message:
                        message = f"{message} (file {source})"
                    logger.error("input rejected: %s: %s", source, message)
                    self.bad.append((source, message))
                    continue
            good.append(item)
        self.good = good
        logger.info(
            "%d input(s): %d to segment into %s, %d rejected",
            len(self.items),
            len(good),
            self.output_dir,
            len(self.bad),
        )
        if not good:
            self.finish()
        return len(good)

    def _write_mapping(self) -> Path | None:
        if self.output_dir is None:
            return None
        bad = dict(self.bad)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["input", "output", "status", "message"])
        for item in self.items:
            source = _source_name(item, self.image_key)
            out = item.get(self.output_key, "")
            if source in bad:
                writer.writerow([source, "", "rejected", bad[source]])
            else:
                writer.writerow([source, out, "written" if out and os.path.isfile(out) else "missing", ""])
        path = self.output_dir / MAPPING_CSV
        atomic_write_text(path, buffer.getvalue())
        return path

    def finish(self) -> int:
        """Write the mapping CSV; raise :class:`InferenceInputError` listing the bad inputs, if any.

        Returns:
            the number of segmentations written.
        """
        path = self._write_mapping()
        written = sum(1 for item in self.good if os.path.isfile(item.get(self.output_key, "")))
        if path is not None:
            logger.info("%d segmentation(s) written; inputs and outputs listed in %s", written, path)
        if self.bad:
            lines = "\n".join(f"  {src}: {msg}" for src, msg in self.bad)
            logger.error("%d input(s) could not be segmented:\n%s", len(self.bad), lines)
            raise InferenceInputError(
                f"{len(self.bad)} of {len(self.items)} input(s) could not be segmented (the other {written} were "
                f"written): " + "; ".join(f"{src}: {msg}" for src, msg in self.bad)
            )
        return written


def _file_of(d: Mapping, key: Hashable) -> str:
    img = d[key]
    meta = getattr(img, "meta", None) or d.get(f"{key}_meta_dict", {}) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else "<unknown file>"


class CheckInputd:
    """Refuse an input scan that cannot be segmented, naming the file: not 2D / 3D (after the channel axis:
    ``(C, H, W)`` or ``(C, H, W, D)``), a channel count other than ``in_channels``, or non-finite voxels
    (``nonfinite="error"``; ``"replace"`` sets them to the finite minimum of the scan, with a warning)."""

    def __init__(
        self, keys: str | Sequence[str] = "image", nonfinite: str = "error", in_channels: int | None = None
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.nonfinite, self.in_channels = nonfinite, in_channels

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.keys:
            img = d[key]
            name = _file_of(d, key)
            shape = tuple(img.shape)
            meta = getattr(img, "meta", None) or {}
            channel_in_file = str(meta.get("original_channel_dim", "no_channel")) not in ("no_channel", "nan")
            file_dims = len(shape) - 1 + int(channel_in_file)
            if len(shape) not in (3, 4) or (channel_in_file and file_dims > 3 and shape[0] != (self.in_channels or 1)):
                file_shape = tuple(int(v) for v in meta.get("spatial_shape", shape[1:]))
                file_shape = file_shape + ((shape[0],) if channel_in_file else ())
                raise ValueError(
                    f"{name}: a {file_dims}D image (shape {file_shape}); expected a 2D image or a 3D volume "
                    "(split a 4D series into 3D volumes first)"
                )
            if self.in_channels is not None and shape[0] != int(self.in_channels):
                raise ValueError(f"{name}: {shape[0]} channel(s); the model expects {self.in_channels}")
            t = img if torch.is_tensor(img) else torch.as_tensor(np.asarray(img))
            if t.is_floating_point():
                finite = torch.isfinite(t)
                if not bool(finite.all()):
                    n_bad = int((~finite).sum())
                    if self.nonfinite == "error":
                        raise ValueError(
                            f"{name}: {n_bad} voxel(s) are NaN or infinite; fix the scan, or pass "
                            "--nonfinite replace to set them to the scan's minimum"
                        )
                    low = t[finite].min() if bool(finite.any()) else torch.zeros((), dtype=t.dtype)
                    logger.warning(
                        "%s: %d NaN / infinite voxel(s) set to the scan's minimum %s", name, n_bad, float(low)
                    )
                    d[key] = torch.where(finite, t, low.to(t.dtype))
        return d


class SaveSegmentationd:
    """Write ``data[key]`` (a channel-first label map with its metadata) to the path in ``data[output_key]``,
    atomically (a temporary file in the same folder, renamed), as ``output_dtype``; one log line per file. The writer
    is MONAI's for the extension (NIfTI, or PIL for ``.png``: the image at the input's size). ``values``: the value
    written for each class (``[0, 255]`` writes a binary model's mask as 0 / 255), ``None``: the class indices."""

    def __init__(
        self,
        keys: str = "pred",
        output_key: str = "output",
        output_dtype: Any = np.uint8,
        resample: bool = False,
        squeeze_end_dims: bool = True,
        values: Sequence[int] | None = None,
    ) -> None:
        if values is not None and (isinstance(values, (str, Mapping)) or not all(int(v) == v for v in values)):
            raise ValueError(f"values must be a list of integers (one per class) or None, got {values!r}")
        self.values = None if values is None else [int(v) for v in values]
        self.key, self.output_key = keys, output_key
        self.output_dtype, self.resample, self.squeeze_end_dims = output_dtype, bool(resample), bool(squeeze_end_dims)

    def __call__(self, data: Mapping) -> dict:
        from monai.transforms import SaveImage

        d = dict(data)
        target = d.get(self.output_key)
        if not target:
            raise ValueError(
                f"SaveSegmentationd: the item has no {self.output_key!r} path (InferenceInputs.prepare sets it)"
            )
        target = str(target)
        ext = ".nii.gz" if target.lower().endswith(".nii.gz") else os.path.splitext(target)[1]
        saver = SaveImage(
            output_ext=ext,
            output_dtype=self.output_dtype,
            resample=self.resample,
            squeeze_end_dims=self.squeeze_end_dims,
            separate_folder=False,
            print_log=False,
        )
        img = d[self.key]
        if self.values is not None:
            classes = int(img.max()) + 1 if img.numel() else 0
            if classes > len(self.values):
                raise ValueError(f"{target}: class {classes - 1} has no entry in output_values {self.values}")
            plain = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
            mapped = torch.as_tensor(self.values, device=plain.device)[plain.long()]
            if isinstance(img, MetaTensor):
                mapped = MetaTensor(mapped, meta=img.meta, applied_operations=img.applied_operations)
            img = mapped

        def _write(tmp: Path) -> None:
            saver(img, filename=str(tmp)[: -len(ext)])

        atomic_write_with(target, _write, suffix=ext)
        logger.info("segmentation written: %s", target)
        return d
