"""Tests of the benchmark specifications: configs/benchmarks/*.yaml and their loaders (vqseg_bundle.benchmarks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from vqseg_bundle.benchmarks.protocols import PROTOCOLS, load_protocols
from vqseg_bundle.benchmarks.spec import compose
from vqseg_bundle.benchmarks.variants import DEFAULT_VARIANTS, VARIANTS, load_variants

PROTOCOL = {
    "description": "d",
    "config_files": ["configs/train.yaml"],
    "image_size": 32,
    "iterations": 4,
    "val_every": 2,
    "batch_labeled": 2,
    "batch_unlabeled": 2,
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_shipped_specifications_load():
    assert {"cpu", "cpu_peer", "gpu", "gpu_vit", "smoke"} <= set(PROTOCOLS)
    assert set(DEFAULT_VARIANTS) <= set(VARIANTS) and "labeled_only" in VARIANTS
    assert all(v["description"].strip() for v in VARIANTS.values())
    assert "plain_unet" not in VARIANTS  # fragments are not runnable
    # cpu_peer extends cpu: same image size and threads, its own overrides (no AdamW, no ramp-up)
    assert PROTOCOLS["cpu_peer"].image_size == PROTOCOLS["cpu"].image_size and PROTOCOLS["cpu_peer"].threads == 1
    # the peer's fp32 recipe stays fp32 now that train.yaml's precision switches default to "auto"
    # and keeps the augmentation its tables were measured with (no dihedral step) and no orientation classifier
    fp32 = {
        "num_workers": 0,
        "log_every": 10,
        "amp": False,
        "channels_last": False,
        "orientation_correction": False,
        "weak_aug#dihedral": False,
    }
    assert PROTOCOLS["cpu_peer"].overrides == fp32
    assert all(PROTOCOLS[p].overrides["amp"] is False for p in ("cpu", "cpu_peer", "cpu_health", "cpu_short"))
    assert all(
        PROTOCOLS[p].overrides["weak_aug#dihedral"] is False
        for p in ("cpu", "cpu_peer", "cpu_peer_fast", "cpu_health", "cpu_short")
    )
    fast = PROTOCOLS["cpu_peer_fast"]
    assert fast.overrides == {**fp32, "amp": True, "amp_dtype": "bfloat16", "channels_last": True}
    # the same two recipes with the dihedral step: only that override differs
    assert PROTOCOLS["cpu_peer_dihedral"].overrides == {**fp32, "weak_aug#dihedral": True}
    assert PROTOCOLS["cpu_peer_fast_dihedral"].overrides == {**fast.overrides, "weak_aug#dihedral": True}
    assert fast.iterations == PROTOCOLS["cpu_peer"].iterations and fast.image_size == PROTOCOLS["cpu_peer"].image_size
    assert "train#optimizer" in PROTOCOLS["cpu"].overrides and isinstance(PROTOCOLS["cpu"].config_files, tuple)


def test_base_entries_come_first_and_later_ones_win():
    entries = {"a": {"overrides": {"x": 1, "y": 1}}, "b": {"overrides": {"y": 2, "z": 2}}}
    out = compose("t", {"base": ["a", "b"], "overrides": {"x": 3, "w": 3}}, entries)
    assert out == {"x": 3, "y": 2, "z": 2, "w": 3} and list(out) == ["x", "y", "z", "w"]
    out["x"] = 0  # a copy: the entries are unchanged
    assert entries["a"]["overrides"]["x"] == 1


def test_variants_resolve_bases_among_fragments_and_variants(tmp_path):
    path = _write(
        tmp_path,
        {
            "fragments": {"f": {"overrides": {"k": 1}}},
            "default_variants": ["v2"],
            "variants": {
                "v1": {"description": "one", "base": ["f"], "overrides": {"q": [1]}},
                "v2": {"description": "two", "base": ["v1"], "overrides": {"k": 2}},
            },
        },
    )
    variants, defaults = load_variants(path)
    assert variants["v2"] == {"description": "two", "overrides": {"k": 2, "q": [1]}} and defaults == ("v2",)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"variants": {"v": {"overrides": {}}}}, "missing \\['description'\\]"),
        ({"variants": {"v": {"description": "d", "override": {}}}}, "unknown keys \\['override'\\]"),
        ({"variants": {"v": {"description": "d", "base": ["nope"]}}}, "unknown base 'nope'"),
        ({"variants": {"v": {"description": "d", "base": ["v"]}}}, "refers back to itself"),
        ({"variants": {"v": {"description": "d", "base": "f"}}, "fragments": {"f": {}}}, "list of names"),
        ({"variants": {"f": {"description": "d"}}, "fragments": {"f": {}}}, "both a fragment and a variant"),
        ({"variants": {"v": {"description": "d"}}, "default_variants": ["w"]}, "unknown variants \\['w'\\]"),
        ({"variant": {}}, "unknown top-level keys \\['variant'\\]"),
    ],
)
def test_variant_file_errors_name_the_entry(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        load_variants(_write(tmp_path, data))


def test_protocols_extend_and_compose(tmp_path):
    path = _write(
        tmp_path,
        {
            "fragments": {"opt": {"overrides": {"lr": 0.1}}, "io": {"overrides": {"num_workers": 0}}},
            "protocols": {
                "p": {**PROTOCOL, "threads": 1, "base": ["opt", "io"], "overrides": {"ramp": 8}},
                "q": {"extends": "p", "iterations": 6},
                "r": {"extends": "q", "base": ["io"]},
            },
        },
    )
    protocols = load_protocols(path)
    assert protocols["p"].overrides == {"lr": 0.1, "num_workers": 0, "ramp": 8}
    assert protocols["q"].iterations == 6 and protocols["q"].overrides == protocols["p"].overrides
    assert protocols["r"].name == "r" and protocols["r"].threads == 1 and protocols["r"].overrides == {"num_workers": 0}
    assert protocols["r"].schedule_overrides()["epochs"] == 3


@pytest.mark.parametrize(
    "protocols, message",
    [
        ({"p": {k: v for k, v in PROTOCOL.items() if k != "image_size"}}, "missing \\['image_size'\\]"),
        ({"p": {**PROTOCOL, "image_size": "32"}}, "image_size must be a positive integer"),
        ({"p": {**PROTOCOL, "iterations": 5}}, "multiple of val_every"),
        ({"p": {**PROTOCOL, "config_files": "configs/train.yaml"}}, "config_files must be a non-empty list"),
        ({"p": {**PROTOCOL, "threads": 0}}, "threads must be a positive integer"),
        ({"p": {**PROTOCOL, "name": "x"}}, "unknown keys \\['name'\\]"),
        ({"p": {**PROTOCOL, "extends": "nope"}}, "extends 'nope'"),
        ({"p": {**PROTOCOL, "extends": "q"}, "q": {"extends": "p"}}, "extends"),
        ({"p": {**PROTOCOL, "base": ["nope"]}}, "unknown base 'nope'"),
    ],
)
def test_protocol_file_errors_name_the_entry(tmp_path, protocols, message):
    with pytest.raises(ValueError, match=message):
        load_protocols(_write(tmp_path, {"protocols": protocols}))
