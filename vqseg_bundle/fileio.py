"""Crash-safe writes of every file the bundle produces (checkpoints, ``models/model.pt`` and its settings,
metrics CSVs, segmentations).

Each file is written to a temporary file in the destination folder (a hidden ``.<name>.<random>.tmp``
name, so that globs such as ``*.pt`` never see it), flushed and ``fsync``-ed, then renamed over the
destination (``os.replace``, atomic on POSIX file systems), and the folder is ``fsync``-ed. A crash or
``kill -9`` at any point leaves either the old file or the new one, never a truncated file; a failed
write removes its temporary file. What a write replaces is only removed after the rename.

Errors (full disk, permission denied, file size limit, ...) are raised as :class:`WriteError`, an
``OSError`` whose message names the file and the cause (with the free space of the folder).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "WriteError",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "atomic_write_with",
    "check_writable_dir",
    "temp_path",
]


class WriteError(OSError):
    """A file could not be written; the message names the file and the cause."""


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_mode()


def _free_space(folder: str | os.PathLike) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free in {os.fspath(folder)}"


def _describe(path: str | os.PathLike, err: BaseException) -> WriteError:
    code = getattr(err, "errno", None)
    cause = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    hint = ""
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = f" ({_free_space(Path(path).parent)}); the previous file, if any, is unchanged"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"; check the permissions of {Path(path).parent}"
    out = WriteError(code if code is not None else errno.EIO, f"cannot write {os.fspath(path)!r}: {cause}{hint}")
    out.filename = os.fspath(path)
    return out


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new, unique (created empty, exclusively) hidden file next to ``path``: ``.<name>.<random><suffix>``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """Write ``path`` atomically through ``write(temp_file)``, a function that writes the whole file.

    Args:
        path: destination; its folder is created when missing.
        write: called with the temporary file's path (in the same folder, ending with ``suffix``).
        suffix: ending of the temporary name (e.g. ``".nii.gz"`` for writers that choose the format from it).

    Returns:
        ``path``.

    Raises:
        WriteError: naming ``path`` and the cause; the destination is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path, suffix)
    except OSError as e:
        raise _describe(path, e) from e
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; the destination gets the usual mode
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _describe(path, e) from e
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""

    def _write(tmp: Path) -> None:
        view = memoryview(data)
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)

    return atomic_write_with(path, _write)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically.

    The object is serialised in memory first, so that an error of the file system (no space, no
    permission, size limit) is an ``OSError`` with its real cause, reported as :class:`WriteError`.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())


def check_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` when missing and check that a file can be created in it.

    Raises:
        WriteError: naming the folder and the cause (e.g. permission denied, read-only file system).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".write_check.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        cause = e.strerror or str(e)
        err = WriteError(e.errno or errno.EIO, f"{what} {os.fspath(folder)!r} is not writable: {cause}")
        err.filename = os.fspath(folder)
        raise err from e
    return folder
