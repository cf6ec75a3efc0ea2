"""The settings a model was trained with, kept beside it, and their use by inference / evaluation / export.

Training writes ``models/model.pt`` (a flat state dict) and, beside it, ``models/model.json`` (the same
name with ``.json``): the SHA-256 of the weights file, the validation score it was written for, and the
network-defining settings of the run (the resolved arguments of ``network_def`` and its ``_target_``,
``image_size``, ``in_channels``, ``num_classes``, ``class_names``, ``orientation``, ``slice_axis``,
``normalization``). The record of the model it replaced is kept under ``"previous"`` (the settings file is
renamed into place just before the weights file, so after a crash between the two renames the entry that
matches the weights on disk is still found).

Inference (``configs/inference.yaml``), evaluation (``configs/evaluate.yaml``) and both exports read it:
:func:`resolve_model_settings` merges the model's settings with the values given on the command line
(``null`` / not given = the model's), and a given value that contradicts the model is a ``ValueError``
naming the key, both values and the settings file.

A weights file without its settings file (copied alone, or written before the bundle wrote one) is never run at a
guessed size: what the state dict itself determines (a U-Net's ``in_channels``, ``num_classes``, ``features``,
``reconstruction``, quantized levels and codebook sizes, PFA adapter width) is read from it
(:func:`unet_arguments_of`); what it cannot (the slice size ``image_size``, and the lookup options of quantized
levels, ``quantizer``) must be given explicitly (``--image_size``, ``--quantizer``), else
:class:`ModelSettingsMissingError` names the missing settings file and the flags.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "settings_path",
    "file_sha256",
    "read_model_record",
    "model_settings_of",
    "resolve_model_settings",
    "model_value",
    "check_model_settings",
    "build_network",
    "current_network_arguments",
    "jsonable",
    "train_defaults",
    "effective_value",
    "load_evaluation_network",
    "ModelSettingsMissingError",
    "NOT_IN_WEIGHTS",
    "unet_arguments_of",
    "slice_size",
    "model_image_size",
    "load_model",
    "describe_model",
]

logger = logging.getLogger(__name__)

FORMAT = "vqseg_bundle model settings 1"
#: arguments of the network classes that only load pretrained weights; the trained weights are in model.pt
_WEIGHT_LOADING_ARGS = {"pretrained": False, "weights_path": None}
_UNET = "vqseg_bundle.networks.VQSegUNet"


def settings_path(ckpt_path: str | os.PathLike) -> Path:
    """The settings file of a weights file: ``models/model.pt`` -> ``models/model.json``."""
    return Path(ckpt_path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def jsonable(value: Any) -> Any:
    """``value`` as JSON types (tuples -> lists, numpy / torch scalars -> numbers); ``TypeError`` otherwise."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def read_model_record(ckpt_path: str | os.PathLike) -> dict | None:
    """The settings-file entry that describes the weights file ``ckpt_path``, or ``None`` without a settings file.

    Returns:
        ``{"sha256", "metric", "settings", ...}`` plus ``"path"`` (the settings file). When the weights file does
        not exist (a config parsed without weights) the newest entry is returned.

    Raises:
        ValueError: the settings file is not one, or none of its entries matches the weights file's SHA-256
            (the weights were replaced or copied without their settings).
    """
    path = settings_path(ckpt_path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"model settings file {str(path)!r} cannot be read: {e}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("settings"), dict):
        raise ValueError(f"{str(path)!r} is not a model settings file of this bundle (expected format {FORMAT!r}).")
    entries = [record] + ([record["previous"]] if isinstance(record.get("previous"), dict) else [])
    if not os.path.isfile(ckpt_path):
        return {**record, "path": str(path)}
    digest = file_sha256(ckpt_path)
    for entry in entries:
        if entry.get("sha256") == digest:
            return {**entry, "path": str(path)}
    raise ValueError(
        f"model settings file {str(path)!r} does not describe {os.fspath(ckpt_path)!r} (SHA-256 differs): the weights were "
        "replaced or copied without their settings. Copy the matching .json beside the weights, or delete "
        f"{str(path)!r} to use the config's values."
    )


class ModelSettingsMissingError(ValueError):
    """A weights file without its settings file, and a setting the weights cannot give was not passed explicitly."""


#: settings no state dict determines: from the settings file, or given explicitly (a flag of the same name)
NOT_IN_WEIGHTS = ("image_size",)


def _missing_settings(ckpt_path: str | os.PathLike, what: str, flags: str) -> ModelSettingsMissingError:
    return ModelSettingsMissingError(
        f"{os.fspath(ckpt_path)!r} has no settings file {str(settings_path(ckpt_path))!r} (training writes it beside "
        f"the weights): {what} cannot be read from the weights, and a guess would run the model wrongly without an "
        f"error. Copy the model's .json beside it, or pass {flags}."
    )


def _level_sizes(state: Mapping[str, Any], prefix: str) -> dict[int, int]:
    """``{level: codebook size}`` of the ``quantizers.<level>.`` entries of a state dict."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(re.escape(prefix) + r"(\d+)\.(codebook|base_codebook)", key)
        if m is not None:
            out[int(m.group(1))] = int(value.shape[0])
    return out


def unet_arguments_of(state: Mapping[str, Any]) -> dict:
    """The ``VQSegUNet`` arguments a flat state dict determines by its keys and shapes (``{}`` when it is not a
    ``VQSegUNet``'s): ``in_channels``, ``num_classes``, ``features``, ``reconstruction``, ``vq_levels``,
    ``codebook_size`` (one int when every level has the same), ``pfa_channels``; plus ``"_codebook"`` (the
    quantized levels' ``codebook_type`` / ``codebook_dim``, for messages). The slice size and the quantizers' lookup
    options (``cosine``, ...) leave no trace in the weights."""
    first = state.get("encoder.0.conv_0.conv.weight")
    head = state.get("seg_decoder.head.weight")
    if first is None or head is None or getattr(first, "ndim", 0) != 4:
        return {}
    features = [int(state["encoder.0.conv_1.conv.weight"].shape[0])] if "encoder.0.conv_1.conv.weight" in state else []
    level = 1
    while f"encoder.{level}.convs.conv_1.conv.weight" in state:
        features.append(int(state[f"encoder.{level}.convs.conv_1.conv.weight"].shape[0]))
        level += 1
    if len(features) < 2:
        return {}
    sizes = _level_sizes(state, "quantizers.")
    out: dict[str, Any] = {
        "in_channels": int(first.shape[1]),
        "num_classes": int(head.shape[0]),
        "features": features,
        "reconstruction": any(k.startswith("rec_decoder.") for k in state),
        "vq_levels": sorted(sizes),
        "pfa_channels": int(state["adapter.proj.weight"].shape[0]) if "adapter.proj.weight" in state else None,
    }
    if sizes:
        values = [sizes[lv] for lv in sorted(sizes)]
        out["codebook_size"] = values[0] if len(set(values)) == 1 else values
        lv = sorted(sizes)[0]
        projected = state.get(f"quantizers.{lv}.project_in.weight")
        out["_codebook"] = {
            "codebook_type": "learnable" if f"quantizers.{lv}.codebook" in state else "simvq",
            "codebook_dim": None if projected is None else int(projected.shape[0]),
        }
    return out


def model_settings_of(record: Mapping | None) -> dict:
    """Flat settings of a record: the ``network_def`` arguments, ``image_size`` and the other recorded keys,
    plus ``network_target`` (the network class)."""
    if not record:
        return {}
    settings = dict(record["settings"])
    network = dict(settings.pop("network_def", None) or {})
    flat = dict(settings)
    target = network.pop("_target_", None)
    flat.update(network)
    if target is not None:
        flat["network_target"] = target
    flat["_network_keys"] = sorted(network)
    return flat


def _same(a: Any, b: Any) -> bool:
    try:
        a, b = jsonable(a), jsonable(b)
    except TypeError:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _mismatch(key: str, given: Any, model: Any, path: str) -> ValueError:
    return ValueError(
        f"{key}: the command line / config gives {given!r} but the model was trained with {model!r} "
        f"(recorded in {path}). Leave --{key} out to use the model's value, or pass the weights of a model "
        f"trained with {key} {given!r}."
    )


def resolve_model_settings(
    ckpt_path: str | os.PathLike, requested: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None
) -> dict:
    """The settings to build and run the network of ``ckpt_path`` with.

    Args:
        ckpt_path: the weights file; its settings file (:func:`settings_path`) is read when it exists.
        requested: values given by the user / config; ``None`` means "the model's value". A non-``None`` value
            must equal the model's recorded one.
        defaults: values for keys neither requested nor recorded (a model without a settings file: the
            training config's defaults).

    Returns:
        ``defaults`` updated with the model's settings, then with the requested non-``None`` values; plus
        ``"settings_file"`` (the file read, or ``None``), ``"weights_file"`` and, for a recorded model,
        ``"network_def"`` (the network's ``_target_`` and arguments as trained). For a weights file without a
        settings file, the network keys its state dict determines (:func:`unet_arguments_of`) replace the
        defaults (listed under ``"read_from_weights"``), and the keys of :data:`NOT_IN_WEIGHTS` not requested are
        ``None`` (:func:`slice_size` then refuses to guess); without any weights file (a config parsed for its
        checks) the defaults stand.

    Raises:
        ValueError: naming the key, both values and the settings file, when a requested value contradicts the
            model, or a requested network key is not an argument of the model's network.
        ModelSettingsMissingError: a weights file without settings has quantized levels and no ``quantizer``
            was requested (their lookup options are not in the weights).
    """
    record = read_model_record(ckpt_path)
    model = model_settings_of(record)
    network_keys = set(model.pop("_network_keys", []))
    out = dict(defaults or {})
    out.update(model)
    path = record["path"] if record else None
    if record is None and os.path.isfile(ckpt_path):
        out.update(_weights_only_settings(ckpt_path, requested or {}, defaults or {}))
    for key, value in (requested or {}).items():
        if value is None:
            continue
        if record is not None:
            if key in model and not _same(value, model[key]):
                raise _mismatch(key, value, model[key], path)
            if key not in model and network_keys and key in (defaults or {}):
                raise ValueError(
                    f"{key}: given as {value!r}, but the model's network ({model.get('network_target')}, recorded "
                    f"in {path}) has no such argument; leave --{key} out."
                )
        out[key] = value
    out["settings_file"] = path
    out["weights_file"] = os.fspath(ckpt_path)
    if record is not None:
        net = dict(record["settings"].get("network_def") or {})
        if net:
            out["network_def"] = net
    return out


def _weights_only_settings(ckpt_path: str | os.PathLike, requested: Mapping[str, Any], defaults: Mapping) -> dict:
    """For a weights file without a settings file: what its state dict determines (where the defaults have the
    key and nothing was requested), ``None`` for :data:`NOT_IN_WEIGHTS` not requested."""
    from vqseg_bundle.networks.weights import read_state_dict

    try:
        derived = unet_arguments_of(read_state_dict(ckpt_path))
    except (OSError, ValueError):
        derived = {}  # not a flat state dict: loading it names the problem
    codebook = derived.pop("_codebook", None)
    out: dict[str, Any] = {
        k: v for k, v in derived.items() if k in defaults and requested.get(k) is None and k != "image_size"
    }
    out["read_from_weights"] = sorted(out)
    for key in NOT_IN_WEIGHTS:
        if requested.get(key) is None:
            out[key] = None
    unknown = [k for k in ("quantizer", "quantize_paths") if requested.get(k) is None and k in defaults]
    if derived.get("vq_levels") and unknown:
        raise _missing_settings(
            ckpt_path,
            f"the lookup options of its quantized levels {derived['vq_levels']} ({codebook['codebook_type']} "
            f"codebook{'' if codebook['codebook_dim'] is None else ', codebook_dim ' + str(codebook['codebook_dim'])}"
            "; cosine, gradient, ...) and which paths read them",
            "--quantizer as it was trained (configs/train.yaml's default quantizer dict, or \"{}\" for the paper's "
            "SimVQ quantizer), --quantize_paths as it was trained (all: the paper's, every path reads the codes; "
            "perturbed: QPM as a perturbation only, inference never quantizes) and --image_size (the slice size it "
            "was trained at)",
        )
    return out


def slice_size(settings: Mapping[str, Any]) -> int:
    """The slice size (``image_size``) of resolved settings (:func:`resolve_model_settings`).

    Raises:
        ModelSettingsMissingError: naming the weights file, its missing settings file and ``--image_size``, when
            neither the settings file nor the command line gave it.
    """
    size = settings.get("image_size")
    if size is None:
        raise _missing_settings(
            settings.get("weights_file") or "the model",
            "the slice size it was trained at",
            "--image_size N (the size it was trained at: 64 for the README's demo model, 256 for configs/train.yaml's "
            "default; network keys such as --features are read from the weights or may be passed too)",
        )
    return int(size)


def model_image_size(ckpt_path: str | os.PathLike) -> int:
    """The slice size recorded for the model ``ckpt_path`` (``configs/evaluate.yaml``'s ``image_size``, which
    ``--image_size`` replaces).

    Raises:
        FileNotFoundError: no weights file.
        ModelSettingsMissingError: a weights file without its settings file (see :func:`slice_size`).
    """
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(
            f"Checkpoint file {os.fspath(ckpt_path)!r} does not exist: train a model first (README) or pass "
            "--ckpt_path."
        )
    record = read_model_record(ckpt_path)
    size = None if record is None else record["settings"].get("image_size")
    return slice_size({"image_size": size, "weights_file": os.fspath(ckpt_path)})


def describe_model(ckpt_path: str | os.PathLike, settings: Mapping[str, Any] | None = None) -> str:
    """One sentence naming the weights file loaded and where its settings came from (logged by inference and
    evaluation)."""
    settings = dict(settings or {})
    record = read_model_record(ckpt_path)
    target = None
    if record is not None:
        target = ((record.get("settings") or {}).get("network_def") or {}).get("_target_")
        metric = record.get("metric") or {}
        value = metric.get("value")
        score = f", {metric.get('name')} {value:.4f}" if isinstance(value, (int, float)) else ""
        origin = f"settings {record['path']}{score}"
    else:
        read = settings.get("read_from_weights") or []
        origin = "no settings file" + (f"; {', '.join(read)} read from the weights" if read else "")
    size = settings.get("image_size") if settings.get("image_size") is not None else "?"
    name = (target or settings.get("network_target") or "").rsplit(".", 1)[-1]
    return f"model loaded: {os.fspath(ckpt_path)} ({name + ', ' if name else ''}slice size {size}; {origin})"


def load_model(network, ckpt_path: str | os.PathLike, settings: Mapping[str, Any], inferer=None):
    """Inference's first step: the weights of ``ckpt_path`` into ``network`` (checked), the slice size known (the
    ``roi_size`` of ``inferer``, whose config reads :func:`slice_size`, or :func:`slice_size` itself), one log line
    naming the file (:func:`describe_model`). The inferer is passed so that a config refers to it here, before any
    input is read: a slice size nobody gave stops the run at once.

    Returns:
        ``network``.
    """
    from vqseg_bundle.inferers.checkpoint import load_network_weights

    load_network_weights(network, ckpt_path)
    roi = getattr(inferer, "roi_size", None)
    if roi is None:
        size: Any = slice_size(settings)
    else:
        size = int(roi[0]) if len(set(roi)) == 1 else "x".join(str(int(r)) for r in roi)
    logger.info(describe_model(ckpt_path, {**settings, "image_size": size}))
    return network


def model_value(ckpt_path: str | os.PathLike, key: str, default: Any = None) -> Any:
    """One recorded setting of the model ``ckpt_path`` (``default`` without a settings file or that key)."""
    return model_settings_of(read_model_record(ckpt_path)).get(key, default)


def check_model_settings(ckpt_path: str | os.PathLike, values: Mapping[str, Any]) -> dict | None:
    """Check the effective config ``values`` against the model's recorded settings (no-op without a settings file).

    Returns:
        the record (or ``None``).

    Raises:
        ValueError: naming the key, both values and the settings file, for the first contradiction.
    """
    record = read_model_record(ckpt_path)
    if record is None:
        return None
    model = model_settings_of(record)
    for key, value in values.items():
        if value is not None and key in model and not _same(value, model[key]):
            raise _mismatch(key, value, model[key], record["path"])
    return record


def build_network(settings: Mapping[str, Any], keys: list[str] | tuple[str, ...] | None = None):
    """The network of a model: its recorded ``network_def`` (class and arguments), or, without one, a
    ``VQSegUNet`` from the ``keys`` of ``settings`` (the config's values).

    Arguments that only load pretrained weights (``pretrained``, ``weights_path``) are switched off: the
    trained weights come from the model file.
    """
    from monai.bundle import ConfigComponent

    network = settings.get("network_def")
    if network:
        config = {**dict(network)}
        for k, v in _WEIGHT_LOADING_ARGS.items():
            if k in config:
                config[k] = v
    else:
        names = keys if keys is not None else [k for k in settings if k not in ("image_size", "settings_file")]
        config = {"_target_": _UNET, **{k: settings[k] for k in names if k in settings}}
    return ConfigComponent(current_network_arguments(config)).instantiate()


#: arguments of the networks before version 0.4.0 that are now options of every level's quantizer
_QUANTIZER_ARGS = ("commitment_beta", "usage_entropy_weight", "usage_entropy_temperature", "max_chunk_elements")
#: arguments before 0.4.0 that described the perturbation by name and options (now a built module that acts in
#: training only, hence not needed to rebuild a trained network)
_PERTURBATION_ARGS = (
    "dropout_rate",
    "complementary_keep_ratio",
    "qpm_mode",
    "qpm_eps",
    "qpm_temperature",
    "qpm_distance",
    "qpm_strategy",
)


def current_network_arguments(config: Mapping[str, Any]) -> dict:
    """A network component config (``_target_`` and arguments) in the current form: the arguments a settings
    file of an earlier version recorded flat (``commitment_beta``, ``qpm_eps``, ``perturbation: "qpm"``, ...)
    moved into ``quantizer`` or dropped (the perturbation does not change the weights)."""
    out = {k: v for k, v in config.items() if k not in _PERTURBATION_ARGS and k not in _QUANTIZER_ARGS}
    if isinstance(out.get("perturbation"), str):
        out["perturbation"] = None
    moved = {k: config[k] for k in _QUANTIZER_ARGS if k in config}
    if moved:
        out["quantizer"] = {**moved, **dict(config.get("quantizer") or {})}
    return out


_TRAIN_DEFAULTS: dict | None = None


def train_defaults() -> dict:
    """The literal top-level values of the bundle's ``configs/train.yaml`` (expressions and references left out)."""
    global _TRAIN_DEFAULTS
    if _TRAIN_DEFAULTS is None:
        path = Path(__file__).resolve().parents[2] / "configs" / "train.yaml"
        values: dict = {}
        if path.is_file():
            import yaml

            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            values = {
                k: v
                for k, v in raw.items()
                if not (isinstance(v, str) and v[:1] in ("$", "@", "%")) and not isinstance(v, dict)
            }
        _TRAIN_DEFAULTS = values
    return dict(_TRAIN_DEFAULTS)


def effective_value(ckpt_path: str | os.PathLike, key: str, value: Any) -> Any:
    """For a config layered on ``configs/train.yaml`` (evaluation): the value of ``key`` to use with the model.

    The model's recorded value when ``value`` equals it or is ``configs/train.yaml``'s default (not given
    by the user); ``value`` itself without a settings file or without that key recorded.

    Raises:
        ValueError: naming the key, both values and the settings file, when ``value`` was given (differs from
            the default) and contradicts the model.
    """
    record = read_model_record(ckpt_path)
    model = model_settings_of(record)
    if record is None or key not in model or _same(value, model[key]):
        return value if record is None or key not in model else model[key]
    defaults = train_defaults()
    if key in defaults and _same(value, defaults[key]):
        return model[key]
    raise _mismatch(key, value, model[key], record["path"])


def load_evaluation_network(evaluator, ckpt_path: str | os.PathLike, values: Mapping[str, Any] | None = None):
    """Give ``evaluator`` the network of ``ckpt_path`` with its weights.

    With a settings file, its recorded network (class and arguments) replaces the evaluator's network (the
    config's network keys are then not used) and the evaluator's slice inferer takes the recorded
    ``image_size``, after ``values`` were checked (``image_size`` must be the model's: ``configs/evaluate.yaml``
    gives the model's own unless ``--image_size`` was passed; ``num_classes`` and ``in_channels`` by
    :func:`effective_value`); without one, the weights go into the evaluator's own network (``image_size`` then
    came from ``--image_size``: :func:`model_image_size` refuses to guess). Logs which file was loaded.

    Returns:
        the network.
    """
    from vqseg_bundle.inferers.checkpoint import load_network_weights

    record = read_model_record(ckpt_path)
    values = dict(values or {})
    if record is not None and values.get("image_size") is not None:
        # configs/evaluate.yaml's image_size is the model's own unless given: any other value was given on purpose
        check_model_settings(ckpt_path, {"image_size": values["image_size"]})
    effective = {key: effective_value(ckpt_path, key, value) for key, value in values.items()}
    size = effective.get("image_size") if record is not None else None
    inferer = getattr(evaluator, "inferer", None)
    if size is not None and hasattr(inferer, "roi_size"):
        inferer.roi_size = (int(size), int(size))  # the slice size the model was trained at
    network = evaluator.network
    if record is not None and (record.get("settings") or {}).get("network_def"):
        device = next((t.device for t in network.parameters()), None) if hasattr(network, "parameters") else None
        network = build_network({"network_def": record["settings"]["network_def"]})
        if device is not None:
            network = network.to(device)
        evaluator.network = network
    load_network_weights(network, ckpt_path)
    size = size if size is not None else values.get("image_size")
    logger.info(describe_model(ckpt_path, {"image_size": size}))
    return network
