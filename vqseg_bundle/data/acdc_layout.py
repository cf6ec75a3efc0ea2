"""Where the files of ACDC in the SSL4MIS layout are: the one description of it, for the reader and the converter.

Layout (``dataset_dir``)::

    train_slices.list            training slice names, in the benchmark's order
    labeled_3_cases.list, ...    labeled subsets (slice names)
    val.list                     validation volume names
    data/slices/<name>.h5        2D training slices: "image" float32 (H, W), "label" uint8 (H, W)
    data/<name>.h5               3D validation volumes: "image" (D, H, W), "label" (D, H, W)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vqseg_bundle.data.integrity import IntegrityReport, check_files_exist, check_split_not_empty

__all__ = ["TRAIN_LIST", "VAL_LIST", "AcdcLayout", "is_acdc_layout", "read_list"]

TRAIN_LIST = "train_slices.list"
VAL_LIST = "val.list"


def is_acdc_layout(dataset_dir: str | os.PathLike) -> bool:
    """Whether ``dataset_dir`` holds the SSL4MIS ACDC layout (detected by ``train_slices.list``)."""
    return os.path.isfile(os.path.join(dataset_dir, TRAIN_LIST))


def read_list(path: str | os.PathLike) -> list[str]:
    """Names in a ``.list`` file, one per line, blank lines ignored.

    Raises:
        DataIntegrityError: when the file is missing or unreadable.
    """
    report = IntegrityReport("the ACDC list files")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        report.add(path, "missing list file")
    except (OSError, UnicodeDecodeError) as exc:
        report.add(path, f"unreadable list file ({exc})")
    report.raise_if_any()
    return []  # unreachable


@dataclass(frozen=True)
class AcdcLayout:
    """The files of one ACDC folder (``root``) in the SSL4MIS layout (see the module docstring)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.fspath(self.root))

    @property
    def train_list(self) -> str:
        """Path of ``train_slices.list``."""
        return os.path.join(self.root, TRAIN_LIST)

    @property
    def val_list(self) -> str:
        """Path of ``val.list``."""
        return os.path.join(self.root, VAL_LIST)

    def list_file(self, name: str) -> str:
        """Path of the list file ``name`` (``.list`` appended unless already there), e.g. a labeled subset."""
        return os.path.join(self.root, name if name.endswith(".list") else f"{name}.list")

    def list_names(self) -> list[str]:
        """The names of the folder's list files, without ``.list``, sorted."""
        return sorted(f[:-5] for f in os.listdir(self.root) if f.endswith(".list"))

    def slice_path(self, name: str) -> str:
        """Path of the 2D training slice ``name``."""
        return os.path.join(self.root, "data", "slices", f"{name}.h5")

    def volume_path(self, name: str) -> str:
        """Path of the 3D validation volume ``name``."""
        return os.path.join(self.root, "data", f"{name}.h5")

    def read_names(self) -> tuple[list[str], list[str]]:
        """The training slice and validation volume names, in list order.

        Raises:
            DataIntegrityError: when a list file is missing or unreadable, or the training list is empty.
        """
        train_names = read_list(self.train_list)
        val_names = read_list(self.val_list)
        check_split_not_empty("training", train_names, self.train_list)
        return train_names, val_names

    def file_paths(self, train_names: list[str], val_names: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """``{slice name: path}`` and ``{volume name: path}``, every file checked to exist.

        Raises:
            DataIntegrityError: listing every missing file.
        """
        slice_paths = {n: self.slice_path(n) for n in train_names}
        volume_paths = {n: self.volume_path(n) for n in val_names}
        report = IntegrityReport(self.root)
        check_files_exist(slice_paths.values(), "training slice", report)
        check_files_exist(volume_paths.values(), "validation volume", report)
        report.raise_if_any()
        return slice_paths, volume_paths
