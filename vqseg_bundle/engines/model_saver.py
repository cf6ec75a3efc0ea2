"""``models/model.pt`` and its settings file: written only for a better, finite model, crash-safe.

:class:`BestModelSaver` replaces MONAI's ``CheckpointSaver(save_key_metric=True)`` in ``validate#handlers``.
At every validation it writes the validated network (the teacher) as a flat state dict when, and only when,

* the key metric is finite and beats the score recorded with the existing ``model.pt`` (in its settings
  file, ``model.json``; a resumed run also knows the best score of its checkpoint), and
* every floating-point tensor of the network is finite.

Scores are compared only when they were measured on the same validation data: the settings file records a
fingerprint of the validation set (``validation_data``: the data folder, the number of volumes and a SHA-256 of
every volume's name, image and label, :func:`vqseg_bundle.data.validation_fingerprint`). An existing ``model.pt``
validated on other data (a demo model in the bundle folder of a run on ACDC), or with no fingerprint recorded, is
not compared with: it is moved aside, never deleted, as ``model.replaced-<time>.pt`` (with its ``.json``) just
before this run writes its first model; so is one when ``keep_better`` is off. An existing ``model.pt`` without
a matching record (another bundle version, a copied file) is moved aside as ``model.unscored-<time>.pt``. The
log says which happened and why, naming ``--keep_better_model`` and ``--ckpt_dir``.

Both files are written atomically (:mod:`vqseg_bundle.fileio`): the settings file (which keeps the record
of the model it replaces under ``"previous"``) is renamed into place first, then the weights.

:func:`resolved_config` gives the resolved arguments of a config component (``network_def``), which the
training config records as the model's settings (:mod:`vqseg_bundle.inferers.settings`).
"""

from __future__ import annotations

import datetime
import hashlib
import inspect
import io
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from vqseg_bundle.engines.unwrap import unwrap_model
from vqseg_bundle.fileio import atomic_write_bytes, atomic_write_text
from vqseg_bundle.inferers.settings import FORMAT, file_sha256, jsonable, settings_path

__all__ = ["BestModelSaver", "resolved_config", "network_arguments"]

logger = logging.getLogger(__name__)


def network_arguments(config: Mapping[str, Any]) -> dict:
    """``{"_target_": ..., **arguments}`` of a resolved component config, completed with the defaults of the
    target's signature (so that the record holds every argument, given or not), as JSON values."""
    config = {
        k: v for k, v in config.items() if not (str(k).startswith("_") and str(k).endswith("_")) or k == "_target_"
    }
    target = config.get("_target_")
    args = {k: v for k, v in config.items() if k != "_target_"}
    cls = None
    if isinstance(target, str):
        try:
            from pydoc import locate

            from monai.bundle import ConfigComponent

            cls = locate(ConfigComponent({"_target_": target}).resolve_module_name())
        except Exception:
            cls = None
    elif target is not None:
        cls, target = target, f"{target.__module__}.{target.__qualname__}"
    if cls is not None and callable(cls):
        args = _with_defaults(cls, args)
    out: dict[str, Any] = {"_target_": target}
    for k, v in args.items():
        if _is_built_module(v):
            # built modules (the perturbation) hold no weights and act in training only: nothing to rebuild
            logger.debug("model settings: argument %r of %s (a built %s) is not recorded", k, target, type(v).__name__)
            continue
        try:
            out[k] = jsonable(v)
        except TypeError:
            logger.warning("model settings: argument %r of %s (%s) is not recorded", k, target, type(v).__name__)
    return out


def _with_defaults(cls: Any, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` completed with the defaults of ``cls``'s signature; the options a class passes through as
    ``**kwargs`` are completed from its ``shared_arguments()`` signature when it has one (the VQ-Seg networks)."""
    try:
        signature = inspect.signature(cls)
        bound = signature.bind_partial(**args)
        bound.apply_defaults()
    except (TypeError, ValueError):
        return args
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    shared = getattr(cls, "shared_arguments", None)
    if callable(shared):
        for name, param in shared().parameters.items():
            if name not in out and param.default is not inspect.Parameter.empty:
                out[name] = param.default
    return out


def _is_built_module(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_built_module(v) for v in value)
    return isinstance(value, torch.nn.Module)


def resolved_config(component_id: str = "network_def") -> dict:
    """The resolved arguments (references replaced by values) of the config component ``component_id`` of
    the bundle config being parsed, completed with the defaults of its target (:func:`network_arguments`).

    Call it from a config expression (``"$vqseg_bundle.engines.resolved_config('network_def')"``): MONAI's
    expressions cannot reach the parser, so the function finds the ``ReferenceResolver`` evaluating the
    expression on the call stack and asks it for the component (instantiating it if needed: the same object
    every other reference gets). Every override of the run (``--network_def#features ...``) is included.

    Raises:
        RuntimeError: when not called from a config being parsed.
    """
    from monai.bundle.reference_resolver import ReferenceResolver

    frame = inspect.currentframe()
    resolver = None
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, ReferenceResolver):
            resolver = obj
            break
        frame = frame.f_back
    del frame
    if resolver is None:
        raise RuntimeError("resolved_config() must be called from a bundle config expression")
    resolver.get_resolved_content(component_id)  # resolves (and instantiates) it once, as any reference would
    item = resolver.get_item(component_id)
    if item is None:
        raise KeyError(f"the config has no component {component_id!r}")
    config = item.get_config()
    if not isinstance(config, Mapping):
        raise ValueError(f"config id {component_id!r} is not a component (a dict with _target_)")
    return network_arguments(config)


def _state_dict(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    net = unwrap_model(network)
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def _non_finite(state: Mapping[str, torch.Tensor]) -> list[str]:
    return [
        k
        for k, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


class BestModelSaver:
    """Write the validated network to ``save_dir/filename`` (+ its settings file) when the validation improves.

    Attach to the evaluator (``validate#handlers``). See the module docstring for the rules.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: torch.nn.Module,
        filename: str = "model.pt",
        settings: Mapping[str, Any] | None = None,
        metric_name: str | None = None,
        keep_better: bool = True,
        validation_data: Mapping[str, Any] | None = None,
    ) -> None:
        """
        Args:
            save_dir: folder of the model (``models``).
            network: the validated network (the teacher), saved as a flat state dict.
            filename: weights file name; the settings file has the same name with ``.json``.
            settings: the network-defining settings of the run, recorded in the settings file.
            metric_name: the evaluator metric to compare (default: its key metric); higher is better.
            keep_better: compare with the score recorded with an existing file validated on the same data
                (``False``: the first validation of this run replaces it, as MONAI's saver did; the old file is
                still kept as ``<name>.replaced-<time>.pt``).
            validation_data: the fingerprint of this run's validation set
                (:func:`vqseg_bundle.data.validation_fingerprint`), recorded with the score; an existing model is
                compared with only when its recorded fingerprint has the same ``sha256``. ``None``: unknown, every
                scored model is compared with (as before fingerprints).
        """
        self.save_dir, self.network, self.filename = Path(save_dir), network, filename
        self.settings = dict(settings or {})
        self.metric_name, self.keep_better = metric_name, bool(keep_better)
        self.validation_data = None if validation_data is None else dict(validation_data)
        self.best: float | None = None  # the score to beat in this run
        self.best_epoch = -1
        self._checked_existing = False
        self._set_aside: tuple[str, str] | None = None  # (kind, why) of an existing model to move before writing
        self._best_of_earlier_run = False  # whether ``best`` is the score of a model this run did not write
        self.written = False  # whether this run wrote the file

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    @property
    def settings_file(self) -> Path:
        return settings_path(self.path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def restore_best(self, best: float, epoch: int = -1) -> None:
        """A resumed run's best score so far (from its checkpoint): only a better model replaces the file."""
        if math.isfinite(best) and (self.best is None or best > self.best):
            self.best, self.best_epoch = float(best), int(epoch)

    def summary(self) -> str:
        """One sentence on where the model is: logged at the end of training, the run's last line."""
        entry = self._existing_record()
        if entry is None:
            return f"Training finished; no model was written to {self.path} (no finite, better validation score)."
        if not self.written and self._set_aside is not None:
            return (
                f"Training finished; no model was written to {self.path} (no finite validation score); the file "
                f"there is still the earlier one, not comparable with this run ({self._set_aside[1]})."
            )
        metric = entry.get("metric") or {}
        this_run = self.written and metric.get("value") == self.best
        origin = f"epoch {metric.get('epoch')} of this run" if this_run else "an earlier run (not beaten by this one)"
        return (
            f"Training finished; the model is {self.path} ({metric.get('name')} {float(metric.get('value', 'nan')):.4f}, "
            f"{origin}), its settings {self.settings_file}."
        )

    def log_summary(self) -> None:
        logger.info(self.summary())

    # ------------------------------------------------------------------ the existing model
    def _existing_record(self) -> dict | None:
        """The settings-file entry describing the existing weights file (``None``: no file or no matching record)."""
        path, side = self.path, self.settings_file
        if not path.is_file() or not side.is_file():
            return None
        try:
            record = json.loads(side.read_text(encoding="utf-8"))
            digest = file_sha256(path)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            return None
        for entry in [record] + ([record["previous"]] if isinstance(record.get("previous"), dict) else []):
            if entry.get("sha256") == digest:
                return entry
        return None

    @staticmethod
    def _describe_data(fingerprint: Mapping[str, Any] | None) -> str:
        if not fingerprint:
            return "unknown validation data"
        return f"{fingerprint.get('volumes', '?')} volumes of {fingerprint.get('data') or 'unnamed data'}"

    def _same_data(self, entry: Mapping[str, Any]) -> bool:
        """Whether the existing model's score was measured on this run's validation data."""
        if self.validation_data is None:
            return True  # this run's data unknown: compare as before fingerprints
        recorded = entry.get("validation_data")
        return isinstance(recorded, Mapping) and recorded.get("sha256") == self.validation_data.get("sha256")

    def _check_existing(self, metric_name: str) -> None:
        """Once, at the first validation: compare with the existing model, or plan to move it aside."""
        if self._checked_existing:
            return
        self._checked_existing = True
        if not self.path.is_file():
            return
        entry = self._existing_record()
        metric = (entry or {}).get("metric") or {}
        value = metric.get("value")
        scored = (
            entry is not None
            and metric.get("name") == metric_name
            and isinstance(value, (int, float))
            and math.isfinite(value)
        )
        hint = (
            "--keep_better_model false makes a run replace it whatever its score (the old one kept aside); "
            "--ckpt_dir DIR writes this run's model to another folder"
        )
        if self.keep_better and scored and self._same_data(entry):
            if self.best is None or float(value) > self.best:
                self._best_of_earlier_run = True
            self.restore_best(float(value), int(metric.get("epoch", -1)))
            logger.info(
                "%s holds a model with %s %.4f on the same validation data (%s; recorded in %s): this run replaces "
                "it only with a better one (%s)",
                self.path,
                metric_name,
                value,
                self._describe_data(self.validation_data or entry.get("validation_data")),
                self.settings_file,
                hint,
            )
            return
        if entry is None:
            kind, why = "unscored", f"no score is recorded for it in {self.settings_file}"
        elif not self.keep_better:
            kind, why = "replaced", "--keep_better_model is false"
        elif not scored:
            kind, why = "replaced", f"its record in {self.settings_file} holds no finite {metric_name}"
        elif not isinstance(entry.get("validation_data"), Mapping):
            kind, why = "replaced", (
                f"its {metric_name} {value:.4f} names no validation data (recorded before validation fingerprints), "
                f"so it cannot be compared with this run's score on {self._describe_data(self.validation_data)}"
            )
        else:
            kind, why = "replaced", (
                f"its {metric_name} {value:.4f} was measured on other validation data "
                f"({self._describe_data(entry['validation_data'])}) than this run's "
                f"({self._describe_data(self.validation_data)}): the scores are not comparable"
            )
        self._set_aside = (kind, why)
        logger.warning(
            "%s is not compared with: %s. It will be moved aside (kept, never deleted) when this run writes its first "
            "model; to keep it in place use --ckpt_dir DIR (this run's model goes there), and "
            "--keep_better_model true compares only models validated on the same data",
            self.path,
            why,
        )

    def _move_aside(self) -> None:
        """Rename the existing model (and its settings file) out of the way, before the first write of this run."""
        if self._set_aside is None or not self.path.is_file():
            self._set_aside = None
            return
        kind, why = self._set_aside
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        backup = self.path.with_name(f"{self.path.stem}.{kind}-{stamp}{self.path.suffix}")
        os.replace(self.path, backup)
        if self.settings_file.is_file():
            os.replace(self.settings_file, backup.with_suffix(".json"))
        logger.warning(
            "%s moved to %s (%s); this run writes a new %s (--ckpt_dir DIR writes a run's model elsewhere, "
            "--keep_better_model compares only models validated on the same data)",
            self.path,
            backup,
            why,
            self.path.name,
        )
        self._set_aside = None

    # ------------------------------------------------------------------ each validation
    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise ValueError(
                f"BestModelSaver: the evaluator has no metric {name!r} (metrics: {sorted(engine.state.metrics)})"
            )
        score = float(engine.state.metrics[name])
        epoch = int(engine.state.epoch)
        self._check_existing(name)
        if not math.isfinite(score):
            logger.warning("%s not written: validation %s is %s at epoch %d", self.path, name, score, epoch)
            return
        if self.best is not None and not score > self.best:
            if self._best_of_earlier_run:
                logger.info(
                    "%s kept: %s %.4f at epoch %d does not beat %.4f of the model there from an earlier run, "
                    "validated on the same data (--keep_better_model false replaces it, --ckpt_dir DIR writes this "
                    "run's model elsewhere)",
                    self.path,
                    name,
                    score,
                    epoch,
                    self.best,
                )
            else:
                logger.info(
                    "%s kept: %s %.4f at epoch %d does not beat this run's best %.4f (epoch %d)",
                    self.path,
                    name,
                    score,
                    epoch,
                    self.best,
                    self.best_epoch,
                )
            return
        state = _state_dict(self.network)
        bad = _non_finite(state)
        if bad:
            logger.warning(
                "%s not written: %d tensor(s) of the network are not finite (%s)",
                self.path,
                len(bad),
                ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else ""),
            )
            return
        self.write(state, name, score, epoch)
        self.best, self.best_epoch, self.written = score, epoch, True
        self._best_of_earlier_run = False

    def write(self, state: Mapping[str, torch.Tensor], metric_name: str, score: float, epoch: int) -> None:
        """Write the weights and the settings file (settings first: see the module docstring)."""
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        data = buffer.getbuffer()
        self._move_aside()
        previous = self._existing_record()
        record = {
            "format": FORMAT,
            "file": self.filename,
            "sha256": hashlib.sha256(data).hexdigest(),
            "metric": {"name": metric_name, "value": score, "epoch": epoch},
            "validation_data": None if self.validation_data is None else jsonable(self.validation_data),
            "written": datetime.datetime.now().isoformat(timespec="seconds"),
            "settings": jsonable(self.settings),
            "previous": None if previous is None else {k: v for k, v in previous.items() if k != "previous"},
        }
        atomic_write_text(self.settings_file, json.dumps(record, indent=2) + "\n")
        atomic_write_bytes(self.path, data)
        logger.info(
            "best model written: %s (%s %.4f at epoch %d; settings in %s)",
            self.path,
            metric_name,
            score,
            epoch,
            self.settings_file,
        )
