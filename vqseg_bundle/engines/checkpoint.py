"""Locating resumable checkpoints written by ``CheckpointSaver`` under ``output_dir``."""

from __future__ import annotations

import glob
import os
import re

__all__ = ["latest_checkpoint", "resume_path", "TrainerCheckpointSaver", "TrainerCheckpointLoader"]

_NUM = re.compile(r"=(\d+)\.pt$")


def latest_checkpoint(directory: str | os.PathLike, pattern: str = "*.pt") -> str | None:
    """The most recent checkpoint file in ``directory`` (``None`` when there is none).

    Files are ordered by modification time, ties broken by the number in ``..._epoch=N.pt`` /
    ``..._iteration=N.pt`` names.
    """
    files = glob.glob(os.path.join(os.fspath(directory), pattern))
    if not files:
        return None

    def key(path: str) -> tuple[float, int]:
        m = _NUM.search(path)
        return os.path.getmtime(path), int(m.group(1)) if m else -1

    return max(files, key=key)


def resume_path(resume: bool | str, directory: str | os.PathLike) -> str | None:
    """Resolve the ``resume`` config key to a checkpoint file.

    Args:
        resume: ``False`` (start fresh), ``True`` (latest checkpoint in ``directory``) or a file path.
        directory: where the trainer's resumable checkpoints are written.

    Returns:
        The checkpoint path, or ``None`` when not resuming.

    Raises:
        FileNotFoundError: resuming was asked for but no checkpoint exists.
    """
    if isinstance(resume, str) and resume.strip().lower() in ("true", "false", "none", ""):
        # the bundle CLI (fire) passes `--resume true` as the string "true", not a bool
        resume = {"true": True}.get(resume.strip().lower(), False)
    if resume is False or resume is None:
        return None
    if resume is True:
        path = latest_checkpoint(directory)
        if path is None:
            raise FileNotFoundError(f"resume=True but no checkpoint (*.pt) in {os.fspath(directory)}")
        return path
    path = os.fspath(resume)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    return path


class _WithTrainer:
    """Mixin: add the engine the handler is attached to into ``save_dict`` / ``load_dict`` as ``trainer_key``.

    A handler in ``train#handlers`` cannot reference ``@train#trainer`` (the trainer references its
    handlers: a circular config reference), so the trainer joins the dict at ``attach`` time.
    """

    trainer_key = "trainer"


class TrainerCheckpointSaver(_WithTrainer):
    """``monai.handlers.CheckpointSaver`` whose ``save_dict`` also holds the trainer it is attached to.

    Use it in ``train#handlers`` for resumable checkpoints (epoch / iteration restored on load).
    """

    def __init__(self, save_dir: str, save_dict: dict, trainer_key: str = "trainer", **kwargs) -> None:
        """
        Args:
            save_dir: output folder.
            save_dict: objects with ``state_dict`` (network, teacher, optimizer, lr scheduler, ...).
            trainer_key: key of the trainer in the saved dict.
            kwargs: other ``CheckpointSaver`` arguments (``save_interval``, ``n_saved``, ``save_final``, ...).
        """
        if trainer_key in save_dict:
            raise ValueError(f"save_dict must not contain {trainer_key!r}: the attached trainer is added")
        self.save_dir, self.save_dict, self.trainer_key, self.kwargs = save_dir, dict(save_dict), trainer_key, kwargs
        self.saver = None

    def attach(self, engine) -> None:
        from monai.handlers import CheckpointSaver

        self.saver = CheckpointSaver(self.save_dir, {**self.save_dict, self.trainer_key: engine}, **self.kwargs)
        self.saver.attach(engine)


class TrainerCheckpointLoader(_WithTrainer):
    """``monai.handlers.CheckpointLoader`` whose ``load_dict`` also holds the trainer it is attached to."""

    def __init__(self, load_path: str, load_dict: dict, trainer_key: str = "trainer", **kwargs) -> None:
        """
        Args:
            load_path: checkpoint written by :class:`TrainerCheckpointSaver`.
            load_dict: objects to restore (same keys as the saver's ``save_dict``).
            trainer_key: key of the trainer in the checkpoint.
            kwargs: other ``CheckpointLoader`` arguments (``map_location``, ``strict``, ...).
        """
        if trainer_key in load_dict:
            raise ValueError(f"load_dict must not contain {trainer_key!r}: the attached trainer is added")
        self.load_path, self.load_dict, self.trainer_key, self.kwargs = load_path, dict(load_dict), trainer_key, kwargs

    def attach(self, engine) -> None:
        from monai.handlers import CheckpointLoader

        CheckpointLoader(self.load_path, {**self.load_dict, self.trainer_key: engine}, **self.kwargs).attach(engine)
