"""The list of images an inference run reads: a glob over a folder or a Decathlon-style datalist."""

from __future__ import annotations

import glob
import os
from collections.abc import Sized
from pathlib import Path

from monai.data import load_decathlon_datalist

__all__ = ["list_inference_inputs", "literal_glob", "require_inputs"]


def list_inference_inputs(
    input_glob: str | None = None,
    datalist: str | os.PathLike | None = None,
    data_list_key: str = "test",
    base_dir: str | os.PathLike | None = None,
    image_key: str = "image",
    allow_empty: bool = False,
) -> list[dict[str, str]]:
    """Items ``[{"image": path}, ...]`` for ``LoadImaged``, sorted by path for a glob.

    Args:
        input_glob: pattern such as ``/data/*.nii.gz``; matches may be files or folders (a DICOM
            series folder, read by MONAI's ITK reader). Existing paths are taken literally
            (:func:`literal_glob`). Used when ``datalist`` is ``None``.
        datalist: Decathlon-style JSON file whose ``data_list_key`` entry lists image paths or
            ``{"image": path, ...}`` dicts; relative paths resolve against ``base_dir`` (default:
            the JSON file's folder).
        data_list_key: entry of the datalist to read.
        base_dir: see ``datalist``.
        image_key: key of the image path in the returned items.
        allow_empty: return an empty list instead of raising when nothing matches (lets a bundle
            config be parsed and checked without data; :func:`require_inputs` raises at run time).

    Returns:
        a list of dicts with at least ``image_key``, non-empty unless ``allow_empty``.

    Raises:
        ValueError: when neither source is given.
        FileNotFoundError: when the datalist file is missing, or nothing matches / is listed, or a
            listed image does not exist.
    """
    if datalist is not None and str(datalist) != "":
        path = Path(datalist)
        if not path.is_file():
            raise FileNotFoundError(f"datalist file {str(path)!r} does not exist.")
        items = load_decathlon_datalist(path, is_segmentation=False, data_list_key=data_list_key, base_dir=base_dir)
        for item in items:
            if image_key not in item:
                raise ValueError(f"datalist {str(path)!r} entry {item!r} has no {image_key!r} key.")
            if not os.path.exists(item[image_key]):
                raise FileNotFoundError(f"image {item[image_key]!r} listed in datalist {str(path)!r} does not exist.")
        if not items and not allow_empty:
            raise FileNotFoundError(f"datalist {str(path)!r} lists no images under {data_list_key!r}.")
        return [dict(item) for item in items]
    if not input_glob:
        raise ValueError("Give either input_glob (e.g. '/data/*.nii.gz') or datalist (a JSON file).")
    matches = literal_glob(str(input_glob))
    if not matches and not allow_empty:
        raise FileNotFoundError(
            f"No input matches {input_glob!r}{_folder_hint(str(input_glob))}. Set --input_dir to the folder of the "
            "scans or --input_glob to a pattern, or --datalist to a JSON file."
        )
    return [{image_key: m} for m in matches]


def literal_glob(pattern: str) -> list[str]:
    """Paths matching ``pattern``, sorted, with existing paths taken literally, not as patterns.

    A pattern that names an existing file or folder is that path (a folder name such as ``scans[v1]`` is
    not a character class); otherwise an existing parent folder is taken literally and only the last
    component is a pattern (``/data/[v1]/*.nii.gz``); otherwise the whole pattern is globbed.
    """
    if os.path.exists(pattern):
        return [pattern]
    parent, name = os.path.split(pattern)
    if parent and os.path.isdir(parent):
        return sorted(glob.glob(os.path.join(glob.escape(parent), name)))
    return sorted(glob.glob(pattern))


def require_inputs(items: Sized, input_glob: str | None = None, datalist: str | os.PathLike | None = None) -> int:
    """Raise a clear error when an inference run has nothing to read; return the number of items.

    Args:
        items: the dataset or item list of the run.
        input_glob, datalist: the configured sources, named in the error message.

    Raises:
        FileNotFoundError: when ``items`` is empty.
    """
    n = len(items)
    if n == 0:
        source = f"datalist {str(datalist)!r}" if datalist else f"pattern {input_glob!r}{_folder_hint(str(input_glob))}"
        raise FileNotFoundError(
            f"No input image found for {source}. Set --input_dir to the folder of the scans, "
            "--input_glob to a "
            "pattern (e.g. '/data/*.nii.gz') or --datalist to a JSON file."
        )
    return n


def _folder_hint(pattern: str) -> str:
    """What the pattern's folder holds instead (``" (the folder /d holds 12 .png files: --input_glob '/d/*.png')"``),
    or that it is empty or missing: a 2D image folder read with the default ``*.nii.gz`` pattern is told so."""
    folder = os.path.dirname(pattern)
    if not folder or not os.path.isdir(folder):
        return f" (the folder {folder!r} does not exist)" if folder else ""
    suffixes: dict[str, int] = {}
    for name in os.listdir(folder):
        if os.path.isfile(os.path.join(folder, name)) and "." in name:
            ext = name.lower()[name.rindex(".") :]
            suffixes[ext] = suffixes.get(ext, 0) + 1
    if not suffixes:
        return f" (the folder {folder!r} holds no files)"
    ext, count = max(suffixes.items(), key=lambda kv: kv[1])
    hint = os.path.join(folder, "*" + ext)
    return f" (the folder {folder!r} holds {count} {ext} file(s): --input_glob {hint!r})"
