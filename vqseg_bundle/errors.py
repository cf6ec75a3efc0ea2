"""Errors a person reads: the root cause of a chained exception, and a clear last line for the bundle CLI.

MONAI wraps an exception raised while a config is parsed in ``RuntimeError("Failed to instantiate
component ...")`` / ``"Failed to evaluate ..."``, chained (``from e``) several times: the traceback of a
bad dataset folder is ~60 lines whose last line is MONAI's generic message. :func:`install_cli_excepthook`
(installed when the package is imported by ``python -m monai.bundle ...``) prints, for an error raised by
this bundle's own checks (a ``DataIntegrityError``, a missing or contradicting model file, a bad input
scan, ...), only the root cause as one final line naming the file and the problem
(``error: <Type>: <message>``); for any other error, Python's full traceback followed by that line.
Set ``VQSEG_TRACEBACK=1`` for the full traceback in every case.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

__all__ = ["root_cause", "describe", "install_cli_excepthook", "is_bundle_error", "required_file"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (``__cause__`` first, then an unsuppressed ``__context__``)."""
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def describe(exc: BaseException) -> str:
    """``"<Type>: <message>"`` of the root cause of ``exc`` (its first line when it is long)."""
    root = root_cause(exc)
    message = str(root).strip() or repr(root)
    return f"{type(root).__name__}: {message}"


def is_bundle_error(exc: BaseException) -> bool:
    """Whether the root cause of ``exc`` was raised by this package's own code (a check with a clear message)."""
    root = root_cause(exc)
    tb = root.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    filename = os.path.abspath(last.tb_frame.f_code.co_filename)
    return filename.startswith(_PACKAGE_DIR + os.sep) and not isinstance(root, (AssertionError, KeyboardInterrupt))


def _hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt) or os.environ.get("VQSEG_TRACEBACK", "") not in ("", "0"):
        sys.__excepthook__(exc_type, exc, tb)
        if not issubclass(exc_type, KeyboardInterrupt):
            print(f"\nerror: {describe(exc)}", file=sys.stderr)
        return
    if not is_bundle_error(exc):
        traceback.print_exception(exc_type, exc, tb)
        print(f"\nerror: {describe(exc)}", file=sys.stderr)
        return
    print("(VQSEG_TRACEBACK=1 shows the full traceback)", file=sys.stderr)
    print(f"error: {describe(exc)}", file=sys.stderr)


def install_cli_excepthook(force: bool = False) -> bool:
    """Install the hook of the module docstring when this process is ``python -m monai.bundle`` (or ``force``).

    Returns:
        whether it was installed.
    """
    argv0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    is_bundle_cli = argv0.endswith(os.path.join("monai", "bundle", "__main__.py"))
    if not (force or is_bundle_cli) or sys.excepthook is _hook:
        return False
    sys.excepthook = _hook
    return True


def required_file(path: str | os.PathLike, flag: str, what: str = "file", hint: str = "") -> str:
    """``path`` when it is a file; else a ``FileNotFoundError`` naming the file and the command-line flag that sets it.

    For files a config expects under a default path (``--dinov2_weights``): the error says which flag to pass,
    not only which file is missing.

    Args:
        path: the file.
        flag: the config key / command-line flag that sets it (without ``--``).
        what: what the file is, for the message.
        hint: appended to the message.
    """
    path = os.fspath(path)
    if not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(
            f"{what} {path!r} does not exist: pass --{flag} /path/to/the/file" + (f" ({hint})" if hint else "") + "."
        )
    return path
