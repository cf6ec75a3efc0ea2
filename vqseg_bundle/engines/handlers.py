"""Training handlers: codebook health, NaN-skip logging, progress bar, the final validation, output selection,
per-class Dice.

Each handler has ``attach(engine)`` so it can be an inline dict in ``train#handlers`` /
``validate#handlers``. Handlers that read device values back to the host do so every
``interval`` iterations only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Engine, Events
from monai.handlers import MeanDice, from_engine
from vqseg_bundle.engines.unwrap import unwrap_model

__all__ = [
    "output_dict",
    "scalar_output",
    "CodebookUsageHandler",
    "NaNSkipLogger",
    "ProgressBarHandler",
    "FinalValidation",
    "TerminateOnNonFinite",
    "NonFiniteLossError",
    "per_class_dice_metrics",
]

logger = logging.getLogger(__name__)


def output_dict(output: Any) -> dict | None:
    """The trainer's output dict from ``engine.state.output``: the dict itself, or the first item of a
    decollated list of dicts (MONAI's convention, which :class:`SemiSupervisedTrainer` follows); else ``None``."""
    if isinstance(output, dict):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):
        return output[0]
    return None


def scalar_output(output: Any) -> dict[str, Any]:
    """Output transform for ``StatsHandler`` / ``TensorBoardStatsHandler``: every scalar entry of a dict output.

    Args:
        output: ``engine.state.output`` of :class:`~vqseg_bundle.engines.SemiSupervisedTrainer`.

    Returns:
        ``{name: 0-d tensor or number}``; tensors with more than one element are left out.
    """
    output = output_dict(output)
    if output is None:
        return {}
    return {
        k: v
        for k, v in output.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) or (torch.is_tensor(v) and v.numel() == 1)
    }


class CodebookUsageHandler:
    """Codebook health of the student: every ``interval`` iterations (a window) and at the end of every epoch.

    Window values (per the network's ``codebook_usage()``: fraction of codes used, perplexity, distinct codes
    per batch as a fraction of its tokens, codes used, dead codes, K; per level and averaged) are put into
    ``engine.state.output`` as ``codebook_<name>`` (so ``StatsHandler`` / TensorBoard / MLflow pick them up when
    they log on the same iterations) and into ``engine.state.metrics``; the window statistics are then reset.
    At ``EPOCH_COMPLETED`` the epoch histogram (``codebook_epoch_<name>``: usage, codes used, perplexity, per
    level) goes into ``engine.state.metrics`` and one log line, then is reset.
    Attach it *before* the logging handlers so that its values are there when they run.
    """

    def __init__(
        self, network: torch.nn.Module, interval: int = 50, reset: bool = True, prefix: str = "codebook_"
    ) -> None:
        """
        Args:
            network: the student (plain, DDP-wrapped or compiled) with ``codebook_usage()`` and
                ``reset_codebook_usage()``.
            interval: iterations between reads (each read synchronises with the device once).
            reset: reset the running statistics after each read (usage per window rather than since start).
            prefix: key prefix in the output / metrics.
        """
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        net = unwrap_model(network)
        if not callable(getattr(net, "codebook_usage", None)):
            raise ValueError(f"network {type(net).__name__} has no codebook_usage() method")
        self.network, self.interval, self.reset, self.prefix = net, int(interval), bool(reset), prefix
        self.last: dict[str, float] = {}
        self.last_epoch: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        if callable(getattr(self.network, "codebook_epoch_usage", None)):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def __call__(self, engine: Engine) -> None:
        usage = self.network.codebook_usage()
        self.last = {f"{self.prefix}{k}": float(v) for k, v in usage.items()}
        out = output_dict(engine.state.output)
        if out is not None:
            out.update(self.last)
        engine.state.metrics.update(self.last)
        if self.reset and callable(getattr(self.network, "reset_codebook_usage", None)):
            self.network.reset_codebook_usage()

    def epoch_completed(self, engine: Engine) -> None:
        usage = self.network.codebook_epoch_usage()
        if not usage:
            return
        self.last_epoch = {f"{self.prefix}epoch_{k}": float(v) for k, v in usage.items()}
        engine.state.metrics.update(self.last_epoch)
        levels = sorted({k.split("/")[0] for k in usage if "/" in k})
        parts = [
            f"{lv}: {usage[f'{lv}/codes_used']:.0f}/{usage.get(f'{lv}/size', float('nan')):.0f} codes used, "
            f"perplexity {usage[f'{lv}/perplexity']:.1f}"
            for lv in levels
            if f"{lv}/codes_used" in usage
        ]
        engine.logger.info(f"Epoch {engine.state.epoch} codebook: " + "; ".join(parts))
        self.network.reset_codebook_usage("epoch")


class NaNSkipLogger:
    """Every ``interval`` iterations, log a warning when the trainer skipped non-finite steps since the last look."""

    def __init__(self, interval: int = 50, key: str = "skipped_steps") -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval, self.key = int(interval), key
        self.seen = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = output_dict(engine.state.output)
        if out is None or self.key not in out:
            return
        count = int(out[self.key])
        if count > self.seen:
            logger.warning(
                "iteration %d: %d training step(s) skipped because the loss or gradient was not finite "
                "(%d in total)",
                engine.state.iteration,
                count - self.seen,
                count,
            )
            self.seen = count


class NonFiniteLossError(RuntimeError):
    """Training was stopped by :class:`TerminateOnNonFinite` (``terminate_on_nan: true``)."""


class TerminateOnNonFinite:
    """Stop the run at the first non-finite ``"loss"`` output (checked every ``interval`` iterations; each
    check syncs once), and fail it: after the run's ``COMPLETED`` handlers (the final checkpoint) the engine
    raises :class:`NonFiniteLossError`, so ``python -m monai.bundle run training`` exits non-zero.

    The alternative to the trainer's ``nan_policy="skip"``.
    """

    def __init__(self, interval: int = 1, key: str = "loss") -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval, self.key = int(interval), key
        self.stopped_at: int | None = None
        self.value: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.check)
        # registered when the run starts, i.e. after every other handler: runs after the final checkpoint
        engine.add_event_handler(Events.STARTED, self._register_fail)

    def _register_fail(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.fail, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.fail)

    def check(self, engine: Engine) -> None:
        out = output_dict(engine.state.output)
        if out is None or self.key not in out:
            return
        value = out[self.key]
        value = float(value.detach().float().cpu()) if torch.is_tensor(value) else float(value)
        if not torch.isfinite(torch.tensor(value)):
            self.stopped_at, self.value = int(engine.state.iteration), value
            logger.error(
                "iteration %d: %s is %s; stopping the run (terminate_on_nan)", self.stopped_at, self.key, value
            )
            engine.terminate()

    def fail(self, engine: Engine) -> None:
        if self.stopped_at is not None:
            raise NonFiniteLossError(
                f"training stopped at iteration {self.stopped_at}: {self.key} is {self.value} (terminate_on_nan: "
                "true); lower the learning rate, or use --nan_policy skip to skip such steps"
            )


class ProgressBarHandler:
    """ignite ``ProgressBar`` that advances at every iteration and shows the chosen output values, read from the
    device every ``interval`` iterations only (the values shown in between are the last ones read).

    Before, the bar itself was refreshed every ``interval`` iterations: with ``log_every`` 20 an epoch of 20
    iterations showed no bar until it ended. Advancing the bar costs no device synchronisation; reading the values
    does, hence ``interval``.

    The bar is drawn on a terminal only (``terminal_only``): when stderr is a file or a pipe (a log file, CI, a
    batch job) tqdm's carriage-return fragments would be glued to the log lines, and the ``StatsHandler`` lines
    already report the same values.
    """

    def __init__(
        self, interval: int = 10, keys: Sequence[str] = ("loss",), persist: bool = False, terminal_only: bool = True
    ) -> None:
        """
        Args:
            interval: iterations between reads of ``keys`` (each reads them from the device once); the bar itself
                advances at every iteration.
            keys: ``engine.state.output`` entries shown next to the bar.
            persist: keep the finished bar on screen.
            terminal_only: attach nothing unless ``sys.stderr`` is a terminal.
        """
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval, self.keys, self.persist = int(interval), tuple(keys), bool(persist)
        self.terminal_only = bool(terminal_only)
        self.bar: ProgressBar | None = None
        self._engine: Engine | None = None
        self._shown: dict[str, float] = {}
        self._read_at = -1

    def _transform(self, output: Any) -> dict[str, float]:
        iteration = int(self._engine.state.iteration) if self._engine is not None else 0
        if self._read_at < 0 or iteration % self.interval == 0:
            self._read_at = iteration
            output = output_dict(output)
            self._shown = {} if output is None else {k: float(output[k]) for k in self.keys if k in output}
        return dict(self._shown)

    def attach(self, engine: Engine) -> None:
        if self.terminal_only and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
            return
        self._engine = engine
        self.bar = ProgressBar(persist=self.persist)
        self.bar.attach(engine, output_transform=self._transform, event_name=Events.ITERATION_COMPLETED)


class FinalValidation:
    """Validate once more after the last iteration when the periodic validation (MONAI's ``ValidationHandler``,
    every ``val_interval`` epochs) did not validate the last epoch: a run of fewer epochs than ``val_interval``, or
    of a number of epochs that is not a multiple of it, still validates (and so writes) its final model.

    Attach it to the trainer after the ``ValidationHandler`` and before the final checkpoint (which then holds the
    final best score). A run stopped early (``terminate_on_nan``) is not validated again.
    """

    def __init__(self, validator: Engine) -> None:
        """
        Args:
            validator: the validation evaluator (``validate#evaluator``; ``run(global_epoch)`` as MONAI's
                ``Evaluator``, whose ``state.epoch`` is the trainer epoch it last validated).
        """
        self.validator = validator
        self.ran_at: int | None = None  # the trainer epoch this handler validated, if it did

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.should_terminate:
            return
        epoch = int(engine.state.epoch)
        state = getattr(self.validator, "state", None)
        if state is not None and int(getattr(state, "epoch", 0) or 0) == epoch and getattr(state, "iteration", 0):
            return  # the periodic validation already ran after this epoch
        logger.info("validation after the last iteration (epoch %d, iteration %d)", epoch, engine.state.iteration)
        self.validator.run(epoch)
        self.ran_at = epoch


def per_class_dice_metrics(
    num_classes: int,
    class_names: Sequence[str] | None = None,
    prefix: str = "val_dice_",
    output_transform: Callable | None = None,
) -> dict[str, MeanDice]:
    """One MONAI ``MeanDice`` per foreground class, for ``additional_metrics`` of an evaluator.

    Args:
        num_classes: ``K`` including background; predictions and labels must be one-hot ``(K, ...)``.
        class_names: names of the ``K - 1`` foreground classes (default ``class1`` ...).
        prefix: metric name prefix.
        output_transform: gives ``(preds, labels)`` lists of one-hot tensors (default
            ``from_engine(["pred", "label"])``).

    Returns:
        ``{f"{prefix}{name}": MeanDice}``, each reading one class channel.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    names = list(class_names) if class_names is not None else [f"class{c}" for c in range(1, num_classes)]
    if len(names) != num_classes - 1:
        raise ValueError(f"class_names must name the {num_classes - 1} foreground classes, got {names}")

    if output_transform is None:
        output_transform = from_engine(["pred", "label"])

    def _select(c: int) -> Callable:
        def _transform(output: Any) -> tuple[list, list]:
            preds, labels = output_transform(output)
            return [p[c : c + 1] for p in preds], [lb[c : c + 1] for lb in labels]

        return _transform

    return {
        f"{prefix}{name}": MeanDice(include_background=True, output_transform=_select(c), reduction="mean")
        for c, name in enumerate(names, start=1)
    }
