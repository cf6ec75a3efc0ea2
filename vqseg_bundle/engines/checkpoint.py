"""Resumable checkpoints: locating them under ``output_dir``, saving / loading them with the trainer, and
the validation's best metric that must survive a resume."""

from __future__ import annotations

import glob
import logging
import os
import re

from vqseg_bundle.fileio import atomic_torch_save

__all__ = [
    "BestMetricState",
    "checkpoint_problem",
    "latest_checkpoint",
    "resume_path",
    "TrainerCheckpointSaver",
    "TrainerCheckpointLoader",
]

logger = logging.getLogger(__name__)

_NUM = re.compile(r"=(\d+)\.pt$")


def _candidates(directory: str | os.PathLike, pattern: str = "*.pt") -> list[str]:
    """Checkpoint files in ``directory``, newest first (modification time, then the number in
    ``..._epoch=N.pt`` / ``..._iteration=N.pt``). Hidden files (the temporary files of a save) are not listed."""
    files = [f for f in glob.glob(os.path.join(glob.escape(os.fspath(directory)), pattern)) if os.path.isfile(f)]

    def key(path: str) -> tuple[float, int]:
        m = _NUM.search(path)
        return os.path.getmtime(path), int(m.group(1)) if m else -1

    return sorted(files, key=key, reverse=True)


def latest_checkpoint(directory: str | os.PathLike, pattern: str = "*.pt") -> str | None:
    """The most recent checkpoint file in ``directory`` (``None`` when there is none).

    Files are ordered by modification time, ties broken by the number in ``..._epoch=N.pt`` /
    ``..._iteration=N.pt`` names. It does not check that the file loads: :func:`resume_path` does.
    """
    files = _candidates(directory, pattern)
    return files[0] if files else None


def checkpoint_problem(path: str | os.PathLike, required: tuple[str, ...] = ("trainer",)) -> str | None:
    """Why ``path`` cannot be resumed from (``None`` when it loads and holds the ``required`` entries)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "empty file (0 bytes: a save was interrupted)"
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, unpickling error, ...
        return f"does not load ({type(e).__name__}: {str(e)[:200]}; {size} bytes: a truncated or foreign file)"
    if not isinstance(obj, dict):
        return f"holds a {type(obj).__name__}, not a checkpoint dict"
    missing = [k for k in required if k not in obj]
    if missing:
        return f"lacks the entries {missing} of a resumable checkpoint (top level: {sorted(obj)[:8]})"
    return None


def resume_path(resume: bool | str, directory: str | os.PathLike) -> str | None:
    """Resolve the ``resume`` config key to a checkpoint file that loads.

    Args:
        resume: ``False`` (start fresh), ``True`` (the newest checkpoint in ``directory`` that loads) or a
            file path.
        directory: where the trainer's resumable checkpoints are written.

    Returns:
        The checkpoint path, or ``None`` when not resuming. With ``True``, every newer checkpoint that does
        not load (empty, truncated, not a trainer checkpoint) is skipped with a warning naming the file and
        the reason.

    Raises:
        FileNotFoundError: resuming was asked for but no checkpoint exists, or none of them loads (the message
            lists each file and why it was skipped), or the given file is missing / does not load.
    """
    if isinstance(resume, str) and resume.strip().lower() in ("true", "false", "none", ""):
        # the bundle CLI (fire) passes `--resume true` as the string "true", not a bool
        resume = {"true": True}.get(resume.strip().lower(), False)
    if resume is False or resume is None:
        return None
    if resume is True:
        files = _candidates(directory)
        if not files:
            raise FileNotFoundError(f"resume=True but no checkpoint (*.pt) in {os.fspath(directory)}")
        skipped = []
        for path in files:
            problem = checkpoint_problem(path)
            if problem is None:
                if skipped:
                    logger.warning("resume: using %s, the newest checkpoint that loads", path)
                else:
                    logger.info("resume: continuing from %s", path)
                return path
            logger.warning("resume: skipped %s: %s", path, problem)
            skipped.append(f"{path}: {problem}")
        raise FileNotFoundError(f"resume=True but no checkpoint in {os.fspath(directory)} loads: " + "; ".join(skipped))
    path = os.fspath(resume)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise FileNotFoundError(f"resume checkpoint {path} {problem}")
    return path


class _WithTrainer:
    """Mixin: add the engine the handler is attached to into ``save_dict`` / ``load_dict`` as ``trainer_key``.

    A handler in ``train#handlers`` cannot reference ``@train#trainer`` (the trainer references its
    handlers: a circular config reference), so the trainer joins the dict at ``attach`` time.
    """

    trainer_key = "trainer"


class TrainerCheckpointSaver(_WithTrainer):
    """Resumable checkpoints of the trainer and everything in ``save_dict``, written crash-safe.

    The file layout is MONAI's ``CheckpointSaver``'s (``{key: obj.state_dict()}``, the trainer under
    ``trainer_key``; names ``checkpoint_epoch=N.pt`` / ``checkpoint_iteration=N.pt`` and ``final_filename``),
    so ``monai.handlers.CheckpointLoader`` reads it. Unlike MONAI's saver (``atomic=False``, and with
    ``n_saved=1`` ignite deletes the previous file *before* writing the next one), every file is written
    to a temporary file, fsync-ed and renamed (:func:`vqseg_bundle.fileio.atomic_torch_save`), and an older
    checkpoint is only deleted once the newer one is in place: a crash at any moment leaves a loadable
    checkpoint. A full disk or a permission error is raised naming the file and the cause.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        trainer_key: str = "trainer",
        save_interval: int = 1,
        n_saved: int | None = 1,
        epoch_level: bool = True,
        save_final: bool = True,
        final_filename: str = "checkpoint_final.pt",
        file_prefix: str = "checkpoint",
        **kwargs,
    ) -> None:
        """
        Args:
            save_dir: output folder.
            save_dict: objects with ``state_dict`` (network, teacher, optimizer, lr scheduler, ...).
            trainer_key: key of the trainer in the saved dict.
            save_interval: epochs (``epoch_level``) or iterations between checkpoints; 0 disables them.
            n_saved: interval checkpoints kept (``None``: all).
            epoch_level: count ``save_interval`` in epochs (else iterations).
            save_final: also write ``final_filename`` when the run completes (or is terminated).
            final_filename: name of the final checkpoint.
            file_prefix: prefix of the interval checkpoints' names.
            kwargs: MONAI ``CheckpointSaver`` arguments this saver does not use (accepted and ignored with a
                warning, so configs written for MONAI's saver keep working).
        """
        if trainer_key in save_dict:
            raise ValueError(f"save_dict must not contain {trainer_key!r}: the attached trainer is added")
        if n_saved is not None and int(n_saved) < 1:
            raise ValueError(f"n_saved must be >= 1 or None, got {n_saved}")
        if kwargs:
            logger.warning("TrainerCheckpointSaver ignores the arguments %s", sorted(kwargs))
        self.save_dir, self.save_dict, self.trainer_key = os.fspath(save_dir), dict(save_dict), trainer_key
        self.save_interval, self.n_saved = int(save_interval), None if n_saved is None else int(n_saved)
        self.epoch_level, self.save_final, self.final_filename = bool(epoch_level), bool(save_final), final_filename
        self.file_prefix = file_prefix
        self.saved: list[str] = []
        self.engine = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        self.engine = engine
        if self.save_interval > 0:
            event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
            engine.add_event_handler(event(every=self.save_interval), self.interval_completed)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def _payload(self) -> dict:
        objects = {**self.save_dict, self.trainer_key: self.engine}
        return {k: obj.state_dict() for k, obj in objects.items()}

    def save(self, filename: str) -> str:
        """Write the checkpoint ``save_dir/filename`` atomically; returns its path."""
        path = os.path.join(self.save_dir, filename)
        atomic_torch_save(self._payload(), path)
        logger.info("checkpoint written: %s", path)
        return path

    def interval_completed(self, engine) -> None:
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        unit = "epoch" if self.epoch_level else "iteration"
        path = self.save(f"{self.file_prefix}_{unit}={step}.pt")
        if path in self.saved:
            self.saved.remove(path)
        self.saved.append(path)
        # only now that the new file is in place: drop the ones beyond n_saved
        while self.n_saved is not None and len(self.saved) > self.n_saved:
            old = self.saved.pop(0)
            try:
                os.remove(old)
            except FileNotFoundError:
                pass

    def completed(self, engine) -> None:
        self.save(self.final_filename)


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
        if callable(getattr(self.model_saver, "restore_best", None)):  # vqseg_bundle.engines.BestModelSaver
            self.model_saver.restore_best(best, epoch)
            return
        # MONAI's CheckpointSaver keeps (score, file) pairs and replaces the file only for a higher score
        self.model_saver.load_state_dict({"_saved": [(best, os.path.basename(self.model_path))]})
