"""Unpacking a dataset archive (the copy of ACDC that travels to a GPU machine)."""

from __future__ import annotations

import tarfile
from pathlib import Path


def unpack_dataset(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a dataset archive (e.g. ``acdc_8bit.tar.xz``, the copy that travels to a GPU machine) once.

    Args:
        archive: a tar archive (any compression ``tarfile`` reads) of an ACDC folder in the SSL4MIS layout.
        dest: folder to unpack into; a finished unpack leaves ``dest/.unpacked`` and is not repeated.

    Returns:
        The unpacked folder that holds ``train_slices.list`` (``dest`` or one of its subfolders).

    Raises:
        FileNotFoundError: the archive is missing.
        ValueError: the archive is not a tar file, has unsafe member paths, or holds no ``train_slices.list``.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: dataset archive not found")
    marker = dest / ".unpacked"
    if not (marker.exists() and marker.read_text() == str(archive.resolve())):
        if not tarfile.is_tarfile(archive):
            raise ValueError(f"{archive}: not a tar archive")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # "data" refuses absolute paths, "..", links out of dest
        marker.write_text(str(archive.resolve()))
    found = sorted(dest.rglob("train_slices.list"), key=lambda p: len(p.parts))
    if not found:
        raise ValueError(f"{archive}: holds no train_slices.list (expected an ACDC folder in the SSL4MIS layout)")
    return found[0].parent
