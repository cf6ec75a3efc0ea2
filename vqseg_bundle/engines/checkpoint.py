"""Resumable checkpoints: locating them under ``output_dir``, saving / loading them with the trainer, and
the validation's best metric that must survive a resume."""

from __future__ import annotations

import glob
import os
import re

__all__ = ["BestMetricState", "latest_checkpoint", "resume_path", "TrainerCheckpointSaver", "TrainerCheckpointLoader"]

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


class BestMetricState:
    """The validation's best key metric as a checkpointable object, so that a resumed run keeps it.

    Without it a resumed run starts with no best value: its first validation, however poor, would
    overwrite ``models/model.pt`` (the best teacher so far). Put it in the resumable checkpoint's
    ``save_dict`` / ``load_dict``; on load it restores ``best_metric`` / ``best_metric_epoch`` of the
    evaluator and tells the best-model ``CheckpointSaver`` that ``model_path`` already holds a model of
    that score (ignite's ``Checkpoint.load_state_dict``), so only a better one replaces it.
    """

    def __init__(self, evaluator, model_saver=None, model_path: str | os.PathLike | None = None) -> None:
        """
        Args:
            evaluator: the validation engine (MONAI ``Workflow``: ``state.best_metric``, ``state.best_metric_epoch``).
            model_saver: the ``monai.handlers.CheckpointSaver`` that writes the best model (``save_key_metric``).
            model_path: the file that saver writes (e.g. ``models/model.pt``); the saver is only told about it
                when the file exists (otherwise the next validation writes it).
        """
        self.evaluator, self.model_saver = evaluator, model_saver
        self.model_path = None if model_path is None else os.fspath(model_path)

    def state_dict(self) -> dict:
        """``{"best_metric": float, "best_metric_epoch": int}`` (``-1`` / ``-1`` before any validation)."""
        state = self.evaluator.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the best metric into the evaluator and the best-model saver."""
        missing = {"best_metric", "best_metric_epoch"} - set(state_dict)
        if missing:
            raise ValueError(f"best-metric state lacks {sorted(missing)}; got keys {sorted(state_dict)}")
        best, epoch = float(state_dict["best_metric"]), int(state_dict["best_metric_epoch"])
        self.evaluator.state.best_metric = best
        self.evaluator.state.best_metric_epoch = epoch
        if epoch < 0 or self.model_saver is None or self.model_path is None or not os.path.isfile(self.model_path):
            return
        # the saver keeps (score, file) pairs and replaces the file only for a higher score
        self.model_saver.load_state_dict({"_saved": [(best, os.path.basename(self.model_path))]})
