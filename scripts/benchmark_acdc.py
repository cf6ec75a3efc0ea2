"""ACDC benchmark: VQ-Seg against its baselines, trained and evaluated with the bundle's own configs.

Each (variant, labeled-patient count) is one ``python -m monai.bundle run training`` subprocess on
``configs/train.yaml`` (so every run is isolated and its exact command line is logged), followed by
one evaluation subprocess (``configs/train.yaml`` + ``configs/evaluate.yaml``) of the best EMA-teacher
``model.pt`` on the validation volumes. The script then collects Dice / Jaccard / HD95 / ASD per class,
the learning curves (validation Dice against iteration, read from the TensorBoard event files the
trainer writes) and training diagnostics (pseudo-label mask ratio, codebook usage, loss terms), and
rewrites the section of ``docs/results.md`` between ``<!-- acdc-benchmark:start -->`` and
``<!-- acdc-benchmark:end -->``.

Examples (from the bundle root):
    python scripts/benchmark_acdc.py variants                        # the variants and their overrides
    python scripts/benchmark_acdc.py run --protocol cpu --labeled "[3]" \\
        --variants "['labeled_only','dropout_mt','vqseg_full']"
    python scripts/benchmark_acdc.py run --protocol gpu --labeled "[3,7]" --variants "['dropout_mt','vqseg_full']"
    python scripts/benchmark_acdc.py run --protocol gpu_vit --extra "{'dinov2_weights': '/w/dinov2_vits14_pretrain.pth'}"
    python scripts/benchmark_acdc.py run --protocol cpu --dry_run true    # print the commands only
    python scripts/benchmark_acdc.py report                          # rebuild docs/results.md from results/

Layout: checkpoints, TensorBoard files and evaluation outputs under ``--work_dir`` (default
``outputs/benchmark``, git-ignored); small artefacts (``run.json`` with the commands, environment and
wall times, the evaluation CSVs, ``curve.csv``, ``train_scalars.csv``, log tails) under
``<results_dir>/acdc_<protocol>/labeled<N>/<variant>/``; plots ``docs/acdc_curves_<protocol>_<N>.png``.
A finished run (its ``run.json`` says ``"status": "ok"``) is skipped unless ``--force true``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import fire

REPO = Path(__file__).resolve().parents[1]
# ../shared/data/acdc beside the repository (the layout of the CI machine)
DEFAULT_DATASET_DIR = str(REPO.parent / "shared" / "data" / "acdc")
MARK_START = "<!-- acdc-benchmark:start -->"
MARK_END = "<!-- acdc-benchmark:end -->"
CLASS_NAMES = ("RV", "Myo", "LV")
LOG_TAIL_BYTES = 60_000


# ---------------------------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """One training schedule, identical for every variant run under it.

    Attributes:
        name: protocol key.
        description: one line for the report.
        config_files: training configs layered in this order (evaluate.yaml is appended for evaluation).
        image_size: network input size S (slices resized to S x S).
        iterations: total training iterations (one labeled + one unlabeled batch each).
        val_every: iterations between validations on the validation volumes (divides ``iterations``).
        batch_labeled, batch_unlabeled: batch sizes.
        fm_name: foundation model of the PFA variants under this protocol.
        threads: CPU threads per run (``num_threads`` and ``OMP_NUM_THREADS``); ``None`` leaves torch's default.
            On a shared 2-core machine one thread is about 4x faster than two (no OpenMP spin-waiting on
            descheduled threads; measured with a U-Net step at load ~9).
        overrides: further config overrides shared by every variant.
        notes: caveats printed under the protocol's tables.
    """

    name: str
    description: str
    config_files: tuple[str, ...]
    image_size: int
    iterations: int
    val_every: int
    batch_labeled: int
    batch_unlabeled: int
    fm_name: str = "efficientnet_lite0"
    threads: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def schedule_overrides(self) -> dict[str, Any]:
        """The config overrides that set this protocol's schedule (``epochs`` x ``iterations_per_epoch``)."""
        if self.iterations % self.val_every:
            raise ValueError(
                f"protocol {self.name!r}: iterations ({self.iterations}) must be a multiple of val_every "
                f"({self.val_every})"
            )
        return {
            "image_size": self.image_size,
            "epochs": self.iterations // self.val_every,
            "iterations_per_epoch": self.val_every,
            "val_interval": 1,
            "batch_size_labeled": self.batch_labeled,
            "batch_size_unlabeled": self.batch_unlabeled,
            **({"num_threads": self.threads} if self.threads else {}),
            **self.overrides,
        }


# AdamW instead of train.yaml's SGD for the short CPU schedules (see the "cpu" protocol)
_CPU_OPTIMIZER = {
    "train#optimizer": {
        "_target_": "torch.optim.AdamW",
        "params": "$@network.parameters()",
        "lr": "@lr",
        "weight_decay": "@weight_decay",
    },
    "lr": 0.001,
}
_CPU_OVERRIDES = {**_CPU_OPTIMIZER, "num_workers": 0, "log_every": 10}

PROTOCOLS: dict[str, Protocol] = {
    # Fits the 2-core development CPU: the literature's U-Net (16..256) on 64 px slices, batch 4 + 4, 2000
    # iterations, one thread, validation every 200 iterations on the 20 volumes; the pseudo-label weight
    # ramps up (sigmoid) over the first 800 iterations. Why: at 400 iterations without ramp-up (`cpu_short`)
    # every network still predicted only background until iteration ~250, the teacher's background
    # pseudo-labels were confident (mask ratio 0.93-0.99) and held the semi-supervised students there
    # (dropout MT 2.1 vs labeled-only 50.9 Dice). The literature's SGD lr 0.01 does not leave the
    # all-background solution within such a budget (validation Dice 0.0 after 200 iterations at SGD 0.01
    # and 0.05), so this protocol uses AdamW lr 1e-3 with the same poly decay. Every variant gets exactly
    # this schedule (labeled-only ignores the ramp-up: its pseudo-label weight is 0).
    "cpu": Protocol(
        name="cpu",
        description=(
            "64 px U-Net (16-256), batch 4 + 4, 2000 iterations, AdamW lr 1e-3 poly, pseudo-label weight "
            "sigmoid ramp-up over 800 iterations, 1 thread, validation every 200"
        ),
        config_files=("configs/train.yaml",),
        image_size=64,
        iterations=2000,
        val_every=200,
        batch_labeled=4,
        batch_unlabeled=4,
        threads=1,
        overrides={**_CPU_OVERRIDES, "unsup_rampup_iterations": 800},
        notes=(
            "CPU-protocol caveats: 2000 iterations are 7 % of the literature's 30k at 1/16 of its pixels and 1/3 "
            "of its batch, so these are early-training numbers, below converged ones; at 64 px the U-Net "
            "bottleneck (the only quantized level, where QPM acts) is a 4 x 4 grid and the EfficientNet-Lite0 "
            "feature grid used by PFA is 4 x 4 too; the optimizer is AdamW (see the script), not the "
            "literature's SGD; one seed. Two runs shared the 2 cores at a time (one thread each), so the "
            "train-minute columns are those of a busy machine."
        ),
    ),
    # The literature's U-Net schedule (UniMatch / SSL4MIS ACDC): 256 px, 30k iterations, batch 12 + 12.
    "gpu": Protocol(
        name="gpu",
        description="256 px U-Net (16-256), batch 12 + 12, 30k iterations (SGD poly), validation every 1000",
        config_files=("configs/train.yaml",),
        image_size=256,
        iterations=30000,
        val_every=1000,
        batch_labeled=12,
        batch_unlabeled=12,
        overrides={"num_workers": 4, "log_every": 50},
    ),
    # The paper's backbone: DINOv2 ViT-S/14 + DPT at 224 px (needs --extra "{'dinov2_weights': PATH}").
    "gpu_vit": Protocol(
        name="gpu_vit",
        description="224 px DINOv2 ViT-S/14 + DPT, batch 8 + 4, 30k iterations (AdamW poly), validation every 1000",
        config_files=("configs/train.yaml", "configs/train_dinov2.yaml"),
        image_size=224,
        iterations=30000,
        val_every=1000,
        batch_labeled=8,
        batch_unlabeled=4,
        fm_name="dinov2",
        overrides={"num_workers": 4, "log_every": 50},
    ),
    # A few iterations on tiny images: checks that every variant's configuration builds and runs.
    "smoke": Protocol(
        name="smoke",
        description="smoke test: 32 px, batch 2 + 2, 2 iterations (configuration check only)",
        config_files=("configs/train.yaml",),
        image_size=32,
        iterations=2,
        val_every=2,
        batch_labeled=2,
        batch_unlabeled=2,
        threads=1,
        overrides={"network_def#features": [4, 8, 16, 32], "codebook_size": 64, "num_workers": 0, "log_every": 1},
    ),
}
# The UniMatch peer's own CPU recipe (`../shared/peers/run_unimatch_cpu.py --size 64 --batch 4 --iters 2000`):
# train.yaml's SGD lr 0.01, momentum 0.9, wd 1e-4, poly 0.9 over 2000 iterations, no ramp-up; the side-by-side
# protocol of the bundle against the peer's own code (docs/results.md, "Side by side with the UniMatch peer").
PROTOCOLS["cpu_peer"] = replace(
    PROTOCOLS["cpu"],
    name="cpu_peer",
    description=(
        "the UniMatch peer's CPU recipe: 64 px U-Net (16-256), batch 4 + 4, 2000 iterations, SGD lr 0.01 momentum "
        "0.9 wd 1e-4 poly 0.9, no ramp-up, 1 thread, validation every 250"
    ),
    val_every=250,
    overrides={"num_workers": 0, "log_every": 10},
    notes=(
        "cpu_peer caveats: 2000 iterations at 64 px and batch 4 + 4 are early training (the literature runs 30k "
        "at 256 px, 12 + 12); the peer rows are the peer's own code (`../shared/peers/results/`) on the same "
        "machine type; two runs shared the 2 cores (one thread each)."
    ),
)
# Codebook health of each quantizer option alone (docs/results.md, "Codebook health"): the cpu_peer recipe for 300
# iterations, the quantizer statistics of the training log being the result (Dice after 300 iterations is early).
PROTOCOLS["cpu_health"] = replace(
    PROTOCOLS["cpu_peer"],
    name="cpu_health",
    description="cpu_peer for 300 iterations (validation at 300): codebook health of each quantizer option",
    iterations=300,
    val_every=300,
    notes=(
        "cpu_health caveats: 300 iterations, so the Dice columns are from the start of training; the result is the "
        "codebook health (distinct codes per batch, usage, perplexity) in the diagnostics table."
    ),
)
# The first CPU protocol (kept to reproduce its table): the "cpu" protocol with 400 iterations and a constant
# pseudo-label weight.
PROTOCOLS["cpu_short"] = replace(
    PROTOCOLS["cpu"],
    name="cpu_short",
    description="64 px U-Net (16-256), batch 4 + 4, 400 iterations, AdamW lr 1e-3 poly, 1 thread, validation every 100",
    iterations=400,
    val_every=100,
    overrides=dict(_CPU_OVERRIDES),
    notes=(
        "cpu_short caveats: 400 iterations are about 1 % of the literature's 30k at 1/16 of its pixels and "
        "1/3 of its batch; every network predicted background only until iteration ~250, so these are "
        "numbers from the very start of training (superseded by protocol `cpu`); AdamW, one seed; the "
        "machine was shared with other jobs."
    ),
)


# ---------------------------------------------------------------------------------------------- variants
# A variant is a named set of config overrides on top of train.yaml's defaults (QPM kernel mode, eps 0.7,
# codebook 16384 on the bottleneck, reconstruction weight 1, PFA weight 5, EMA teacher, CutMix, threshold 0.95).
_PLAIN_UNET = {"vq_levels": [], "reconstruction": False, "recon_weight": 0.0}
# the paper's SimVQ quantizer (train.yaml's default quantizer is the collapse-guarded one since 2026-12-02)
_VQ_BOTTLENECK = {"vq_levels": ["bottleneck"], "quantizer": {}}
# the VQ-Seg paper's streams and losses (configs/recipe_paper.yaml): EMA-teacher CE pseudo-labels, the perturbation
# on the strong views, in-batch CutMix partners, every weight 1
_PAPER_STREAMS = {
    "pseudo_labeler": "teacher",
    "perturbed_stream": "strong",
    "cutmix_partner": "batch",
    "ema_decay": 0.99,
    "sup_weight": 1.0,
    "unsup_weight": 1.0,
    "strong_weight": 1.0,
    "fp_weight": 0.0,
    "unsup_ce_weight": 1.0,
    "unsup_dice_weight": 0.0,
}
_NO_PFA = {"fm_name": "none", "align_weight": 0.0}
_FULL = {
    **_PAPER_STREAMS,
    **_VQ_BOTTLENECK,
    "perturbation": "qpm",
    "qpm_mode": "kernel",
    "qpm_eps": 0.7,
    "reconstruction": True,
    "recon_weight": 1.0,
    "align_weight": 5.0,
    "fm_name": "@PFA",
}

# UniMatch V1 (medical): the student labels its own weak view (no EMA: the validated teacher is a copy of the
# student), a second unlabeled batch gives the CutMix partners, a feature-dropout weak stream ("fp") beside the
# two unperturbed strong streams, every unlabeled loss a masked batch Dice, (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2
_UNIMATCH_RECIPE = {
    "pseudo_labeler": "student",
    "perturbed_stream": "weak",
    "cutmix_partner": "second_batch",
    "ema_decay": 0.0,
    "sup_weight": 0.5,
    "unsup_weight": 0.5,
    "strong_weight": 0.5,
    "fp_weight": 0.5,
    "unsup_ce_weight": 0.0,
    "unsup_dice_weight": 1.0,
}
# the VQ-Seg code's streams on the same losses: EMA teacher labels, the perturbation on the strong views
_TEACHER_STRONG = {
    "pseudo_labeler": "teacher",
    "perturbed_stream": "strong",
    "cutmix_partner": "second_batch",
    "sup_weight": 0.5,
    "unsup_weight": 0.5,
    "strong_weight": 1.0,
    "fp_weight": 0.0,
    "unsup_ce_weight": 0.0,
    "unsup_dice_weight": 1.0,
}

_LABELED_ONLY = {**_PLAIN_UNET, **_NO_PFA, "perturbation": "none", "perturb": False, "unsup_weight": 0.0}
_UNIMATCH = {**_PLAIN_UNET, **_NO_PFA, "perturbation": "dropout", **_UNIMATCH_RECIPE}
_VQ_NO_REC = {**_NO_PFA, **_VQ_BOTTLENECK, "reconstruction": False, "recon_weight": 0.0}
# the collapse guards of the VQ literature together (docs/results.md, "Codebook health"): a learnable codebook in a
# 32-d l2-normalised lookup space (ViT-VQGAN), k-means initialisation, dead-code re-seeding, the rotation trick
_GUARDED_QUANTIZER = {
    "codebook_type": "learnable",
    "codebook_dim": 32,
    "cosine": True,
    "kmeans_init": True,
    "dead_code_steps": 50,
    "gradient": "rotation",
}

VARIANTS: dict[str, dict[str, Any]] = {
    "labeled_only": {
        "description": "plain U-Net (no VQ), supervised loss only (unlabeled weight 0, no perturbation); EMA teacher evaluated",
        "overrides": dict(_LABELED_ONLY),
    },
    "labeled_only_bilinear": {
        "description": "labeled_only with the training slices resized bilinearly (image_resize_mode bilinear)",
        "overrides": {**_LABELED_ONLY, "image_resize_mode": "bilinear"},
    },
    "labeled_only_sample_dice": {
        "description": "labeled_only with the supervised Dice per sample (MONAI's default) instead of over the batch",
        "overrides": {**_LABELED_ONLY, "sup_dice_batch": False},
    },
    "unimatch": {
        "description": (
            "UniMatch V1 (medical) inside the bundle: self-labeling student, second-batch CutMix, feature-dropout "
            "weak stream + two strong streams, masked batch Dice, (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2"
        ),
        "overrides": dict(_UNIMATCH),
    },
    "unimatch_bilinear": {
        "description": "unimatch with the training slices resized bilinearly (image_resize_mode bilinear)",
        "overrides": {**_UNIMATCH, "image_resize_mode": "bilinear"},
    },
    "unimatch_ema": {
        "description": "unimatch, but the shipped (validated) model is an EMA teacher of the student (decay 0.99)",
        "overrides": {**_UNIMATCH, "ema_decay": 0.99},
    },
    "vq_unimatch": {
        "description": "unimatch with the bottleneck quantized and QPM (eps 0.7) instead of dropout in the fp stream",
        "overrides": {**_VQ_NO_REC, **_UNIMATCH_RECIPE, "perturbation": "qpm", "qpm_eps": 0.7},
    },
    "vq_unimatch_qpm_dropout": {
        "description": (
            "unimatch with the bottleneck quantized (the paper's SimVQ quantizer, K 16384); "
            "the fp stream gets QPM (eps 0.7) and then feature dropout"
        ),
        "overrides": {**_VQ_NO_REC, **_UNIMATCH_RECIPE, "perturbation": "qpm_dropout", "qpm_eps": 0.7},
    },
    "vq_unimatch_qpm_dropout_guarded": {
        "description": (
            "vq_unimatch_qpm_dropout with the collapse-guarded quantizer: learnable 32-d cosine codebook (K 16384, "
            "factorised lookup), k-means initialisation, dead codes re-seeded after 50 unused forwards, rotation trick"
        ),
        "overrides": {
            **_VQ_NO_REC,
            **_UNIMATCH_RECIPE,
            "perturbation": "qpm_dropout",
            "qpm_eps": 0.7,
            "quantizer": _GUARDED_QUANTIZER,
        },
    },
    **{
        f"vq_guard_{name}": {
            "description": f"vq_unimatch_qpm_dropout (K 16384) with one quantizer option: {option}",
            "overrides": {
                **_VQ_NO_REC,
                **_UNIMATCH_RECIPE,
                "perturbation": "qpm_dropout",
                "qpm_eps": 0.7,
                "quantizer": option,
            },
        }
        for name, option in (
            ("learnable", {"codebook_type": "learnable"}),
            ("dim32", {"codebook_dim": 32}),
            ("cosine", {"cosine": True}),
            ("kmeans", {"kmeans_init": True}),
            ("dead", {"dead_code_steps": 50}),
            ("rotation", {"gradient": "rotation"}),
        )
    },
    "vq_unimatch_qpm_guarded": {
        "description": "vq_unimatch (QPM eps 0.7 alone in the fp stream, no dropout) with the collapse-guarded quantizer",
        "overrides": {
            **_VQ_NO_REC,
            **_UNIMATCH_RECIPE,
            "perturbation": "qpm",
            "qpm_eps": 0.7,
            "quantizer": _GUARDED_QUANTIZER,
        },
    },
    "vq2_unimatch_qpm_dropout_guarded": {
        "description": (
            "vq_unimatch_qpm_dropout_guarded with the deepest skip quantized too (levels 3 and 4), so that QPM is not "
            "bypassed by that skip"
        ),
        "overrides": {
            **_VQ_NO_REC,
            **_UNIMATCH_RECIPE,
            "perturbation": "qpm_dropout",
            "qpm_eps": 0.7,
            "quantizer": _GUARDED_QUANTIZER,
            "vq_levels": [-2, -1],
        },
    },
    "vqall_unimatch_qpm_guarded": {
        "description": (
            "every U-Net level quantized with the collapse-guarded quantizer (K 512, 1024, 4096, 16384, 16384 from full "
            "resolution to the bottleneck) and QPM (eps 0.7) alone in the fp stream: like VQ-Seg's ViT, whose every "
            "decoder input is quantized, no unquantized skip bypasses the perturbation"
        ),
        "overrides": {
            **_VQ_NO_REC,
            **_UNIMATCH_RECIPE,
            "perturbation": "qpm",
            "qpm_eps": 0.7,
            "quantizer": _GUARDED_QUANTIZER,
            "vq_levels": "all",
            "codebook_size": [512, 1024, 4096, 16384, 16384],
        },
    },
    "vq_unimatch_qpm_dropout_guarded_recq": {
        "description": (
            "vq_unimatch_qpm_dropout_guarded plus the reconstruction branch (weight 1) fed by the quantized level only "
            "(recon_input quantized), so that reconstruction pressure reaches the codebook"
        ),
        "overrides": {
            **_VQ_NO_REC,
            **_UNIMATCH_RECIPE,
            "perturbation": "qpm_dropout",
            "qpm_eps": 0.7,
            "quantizer": _GUARDED_QUANTIZER,
            "reconstruction": True,
            "recon_weight": 1.0,
            "network_def#recon_input": "quantized",
        },
    },
    "vqseg_teacher_strong": {
        "description": "VQ-Seg code's streams: EMA teacher labels, QPM (eps 0.7) on the strong views, masked batch Dice",
        "overrides": {**_VQ_NO_REC, **_TEACHER_STRONG, "perturbation": "qpm", "qpm_eps": 0.7},
    },
    "dropout_mt": {
        "description": "mean teacher + UniMatch feature dropout (p 0.5 on every encoder level), plain U-Net (no VQ)",
        "overrides": {**_PLAIN_UNET, **_NO_PFA, **_PAPER_STREAMS, "perturbation": "dropout"},
    },
    "vq_qpm": {
        "description": "VQ (bottleneck, K 16384) + QPM kernel eps 0.7; no reconstruction, no PFA",
        "overrides": {**_VQ_NO_REC, **_PAPER_STREAMS, "perturbation": "qpm", "qpm_mode": "kernel", "qpm_eps": 0.7},
    },
    "vq_qpm_rec": {
        "description": "VQ + QPM eps 0.7 + reconstruction branch (weight 1); no PFA",
        "overrides": {
            **_NO_PFA,
            **_PAPER_STREAMS,
            **_VQ_BOTTLENECK,
            "perturbation": "qpm",
            "qpm_mode": "kernel",
            "qpm_eps": 0.7,
            "reconstruction": True,
            "recon_weight": 1.0,
        },
    },
    "vqseg_full": {
        "description": "full VQ-Seg: VQ + QPM eps 0.7 + reconstruction + PFA (FM: EfficientNet-Lite0, DINOv2 for ViT)",
        "overrides": dict(_FULL),
    },
    **{
        f"vqseg_full_eps{eps}": {
            "description": f"full VQ-Seg with QPM eps {eps}",
            "overrides": {**_FULL, "qpm_eps": eps},
        }
        for eps in (0.1, 0.3, 0.5, 0.7, 0.9)
    },
    "vqseg_full_2levels": {
        "description": (
            "full VQ-Seg with the two deepest U-Net levels quantized and perturbed (the deepest skip connection and "
            "the bottleneck), so that QPM is not bypassed by that skip"
        ),
        "overrides": {**_FULL, "vq_levels": [-2, -1]},
    },
    "vqseg_full_shuffle": {
        "description": "full VQ-Seg with QPM mode 'shuffle' (permutes the indices of an eps 0.7 fraction of positions)",
        "overrides": {**_FULL, "qpm_mode": "shuffle"},
    },
}
DEFAULT_VARIANTS = ("labeled_only", "dropout_mt", "vq_qpm", "vq_qpm_rec", "vqseg_full")


def variant_overrides(variant: str, protocol: Protocol) -> dict[str, Any]:
    """The config overrides of ``variant`` under ``protocol`` (``"@PFA"`` becomes the protocol's FM)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    out = {}
    for key, value in VARIANTS[variant]["overrides"].items():
        out[key] = protocol.fm_name if value == "@PFA" else value
    return out


# ---------------------------------------------------------------------------------------------- commands
def cli_value(value: Any) -> str:
    """A config value as one command-line token that ``monai.bundle``'s fire parser reads back as ``value``.

    Booleans and ``None`` are spelled as Python literals (fire reads ``false`` as the string 'false').
    """
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return (
            json.dumps(value, separators=(",", ":"))
            .replace("true", "True")
            .replace("false", "False")
            .replace("null", "None")
        )
    raise ValueError(f"cannot pass override value {value!r} ({type(value).__name__}) on the command line")


def config_arg(files: Sequence[str]) -> str:
    """``--config_file`` value: one path, or a Python-literal list of paths (MONAI's layering syntax)."""
    return files[0] if len(files) == 1 else json.dumps(list(files), separators=(",", ":"))


def build_commands(
    protocol: Protocol,
    variant: str,
    labeled: int,
    dataset_dir: str,
    run_dir: Path,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """The training and evaluation command lines of one run.

    Returns:
        ``(train_cmd, eval_cmd)`` argument lists (run from the bundle root).
    """
    overrides: dict[str, Any] = {
        "bundle_root": str(REPO),
        "dataset_dir": dataset_dir,
        "labeled": f"labeled_{int(labeled)}_cases",
        "output_dir": str(run_dir),
        "ckpt_dir": str(run_dir / "models"),
        "data_cache_dir": str(run_dir.parents[2] / "demo_cache"),
        "seed": int(seed),
        "progress_bar": False,
        **protocol.schedule_overrides(),
        **variant_overrides(variant, protocol),
        **(extra or {}),
    }
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", cli_value(value)]
    base = [sys.executable, "-m", "monai.bundle", "run"]
    train = base + ["training", "--config_file", config_arg(protocol.config_files)] + args
    evaluate = base + [
        "--config_file",
        config_arg([*protocol.config_files, "configs/evaluate.yaml"]),
        *args,
        "--ckpt_path",
        str(run_dir / "models" / "model.pt"),
    ]
    return train, evaluate


# ---------------------------------------------------------------------------------------------- environment
def environment() -> dict[str, Any]:
    """Versions, CPU / GPU names, core count and the git commit the benchmark ran with."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "cpu": _cpu_name(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for mod in ("monai", "ignite", "timm"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional packages
            info[mod] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
        info["git"] = commit.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    except OSError:  # pragma: no cover - git missing
        info["git"] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_label(env: dict[str, Any]) -> str:
    """Short machine name for the report, e.g. ``CPU-2c, 2 cores, no GPU``."""
    if env.get("gpu"):
        return f"{env['gpu']}, {env['cpu_cores']} CPU cores"
    return f"CPU-{env['cpu_cores']}c, {env['cpu_cores']} cores, no GPU"


# ---------------------------------------------------------------------------------------------- running
def run_name(variant: str, seed: int) -> str:
    """Folder name of one run: the variant for seed 0, ``<variant>_seed<N>`` for other seeds."""
    return variant if int(seed) == 0 else f"{variant}_seed{int(seed)}"


def variant_of(name: str) -> tuple[str, int]:
    """Inverse of :func:`run_name`: ``(variant, seed)``."""
    base, sep, seed = name.rpartition("_seed")
    if sep and seed.isdigit() and base in VARIANTS:
        return base, int(seed)
    return name, 0


def _run_logged(cmd: list[str], log_path: Path, timeout: float | None, threads: int | None = None) -> tuple[int, float]:
    """Run ``cmd`` from the bundle root, stdout + stderr to ``log_path``; returns (return code, seconds)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            log.write(f"\n[benchmark] timed out after {timeout} s\n")
            code = -9
    return code, time.perf_counter() - start


def _tail(path: Path, nbytes: int = LOG_TAIL_BYTES) -> str:
    data = path.read_bytes() if path.exists() else b""
    return data[-nbytes:].decode("utf-8", "replace")


def read_tensorboard(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under ``log_dir``: ``{tag: [(step, value)]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    if not log_dir.exists():
        return {}
    for event_file in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                series.setdefault(tag, {})[int(ev.step)] = float(ev.value)
    return {tag: sorted(values.items()) for tag, values in series.items()}


def _write_curves(series: dict[str, list[tuple[int, float]]], iterations_per_epoch: int, out_dir: Path) -> None:
    """``curve.csv`` (validation metrics per iteration) and ``train_scalars.csv`` (training terms)."""
    val_tags = sorted(t for t in series if t.startswith("val_"))
    epochs = sorted({s for t in val_tags for s, _ in series[t]})
    with open(out_dir / "curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", *val_tags])
        for ep in epochs:
            row = [ep * iterations_per_epoch]
            for t in val_tags:
                row.append(dict(series[t]).get(ep, ""))
            w.writerow(row)
    train_tags = sorted(t for t in series if not t.startswith("val_") and "/" not in t.split("train_", 1)[-1])
    steps = sorted({s for t in train_tags for s, _ in series[t]})
    with open(out_dir / "train_scalars.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", *train_tags])
        lookup = {t: dict(series[t]) for t in train_tags}
        for s in steps:
            w.writerow([s, *[_fmt_float(lookup[t].get(s)) for t in train_tags]])


def _fmt_float(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def run_one(
    protocol: Protocol,
    variant: str,
    labeled: int,
    dataset_dir: str,
    work_dir: Path,
    results_dir: Path,
    seed: int,
    extra: dict[str, Any] | None,
    env: dict[str, Any],
    force: bool,
    dry_run: bool,
    timeout: float | None,
) -> dict[str, Any]:
    """Train, evaluate and collect one (variant, labeled) run; returns its ``run.json`` record."""
    name = run_name(variant, seed)
    run_dir = work_dir / protocol.name / f"labeled{labeled}" / name
    res_dir = results_dir / f"acdc_{protocol.name}" / f"labeled{labeled}" / name
    train_cmd, eval_cmd = build_commands(protocol, variant, labeled, dataset_dir, run_dir, seed, extra)
    record: dict[str, Any] = {
        "protocol": protocol.name,
        "protocol_description": protocol.description,
        "variant": variant,
        "variant_description": VARIANTS[variant]["description"],
        "labeled": int(labeled),
        "seed": int(seed),
        "dataset_dir": dataset_dir,
        "overrides": variant_overrides(variant, protocol),
        "train_command": shlex.join(train_cmd),
        "eval_command": shlex.join(eval_cmd),
        "environment": env,
        "machine": machine_label(env),
    }
    print(f"\n=== {protocol.name} / labeled {labeled} / {variant}", flush=True)
    print("train:", record["train_command"], flush=True)
    print("eval: ", record["eval_command"], flush=True)
    if dry_run:
        record["status"] = "dry_run"
        return record
    previous = res_dir / "run.json"
    if previous.exists() and not force:
        old = json.loads(previous.read_text())
        if old.get("status") == "ok":
            print(f"already done ({previous}); --force true reruns it", flush=True)
            return old
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: no stale model.pt or event files
    run_dir.mkdir(parents=True)
    res_dir.mkdir(parents=True, exist_ok=True)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    code, seconds = _run_logged(train_cmd, run_dir / "train.log", timeout, protocol.threads)
    # wall times depend on what else shares the machine: keep the 1-minute load average around the run
    record.update(
        train_seconds=round(seconds, 1),
        train_returncode=code,
        load_average=[load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
    )
    (res_dir / "train_log_tail.txt").write_text(_tail(run_dir / "train.log"))
    print(f"training: exit {code}, {seconds:.0f} s", flush=True)
    if code != 0 or not (run_dir / "models" / "model.pt").exists():
        record["status"] = "train_failed"
        record["error_tail"] = _tail(run_dir / "train.log", 3000)
        (res_dir / "run.json").write_text(json.dumps(record, indent=2))
        print(record["error_tail"], flush=True)
        return record

    code, seconds = _run_logged(eval_cmd, run_dir / "eval.log", timeout, protocol.threads)
    record.update(eval_seconds=round(seconds, 1), eval_returncode=code)
    (res_dir / "eval_log_tail.txt").write_text(_tail(run_dir / "eval.log", 8000))
    print(f"evaluation: exit {code}, {seconds:.0f} s", flush=True)
    eval_dir = run_dir / "eval"
    if code != 0 or not (eval_dir / "metrics_summary.csv").exists():
        record["status"] = "eval_failed"
        record["error_tail"] = _tail(run_dir / "eval.log", 3000)
        (res_dir / "run.json").write_text(json.dumps(record, indent=2))
        print(record["error_tail"], flush=True)
        return record
    for name in ("metrics_per_case.csv", "metrics_summary.csv"):
        shutil.copyfile(eval_dir / name, res_dir / name)
    series = read_tensorboard(run_dir / "tensorboard")
    _write_curves(series, protocol.val_every, res_dir)
    record["status"] = "ok"
    (res_dir / "run.json").write_text(json.dumps(record, indent=2))
    return record


# ---------------------------------------------------------------------------------------------- report
def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def summarize_run(res_dir: Path) -> dict[str, Any]:
    """Headline numbers of one finished run from its CSVs.

    Dice / Jaccard: the evaluation's mean over volumes (of the mean over classes). HD95 / ASD (voxels):
    mean of the per-class means, each over the volumes where both masks are non-empty; ``missed`` counts
    (volume, class) pairs where the prediction is empty but the label is not (their distance is undefined).
    """
    rows = {r["class_name"]: r for r in _read_csv(res_dir / "metrics_summary.csv")}
    out: dict[str, Any] = {"per_class": {}}
    for c in CLASS_NAMES:
        r = rows.get(c, {})
        out["per_class"][c] = {m: _num(r.get(f"{m}_mean")) for m in ("dice", "jaccard", "hd95_vox", "asd_vox")}
    mean = rows.get("mean", {})
    out["dice"] = _num(mean.get("dice_mean"))
    out["jaccard"] = _num(mean.get("jaccard_mean"))
    for m in ("hd95_vox", "asd_vox"):
        vals = [out["per_class"][c][m] for c in CLASS_NAMES if not math.isnan(out["per_class"][c][m])]
        out[m] = sum(vals) / len(vals) if vals else float("nan")
    out["missed"] = int(sum(_num(rows.get(c, {}).get("n_pred_empty")) or 0 for c in CLASS_NAMES))
    curve = _read_csv(res_dir / "curve.csv") if (res_dir / "curve.csv").exists() else []
    out["curve"] = [(int(r["iteration"]), _num(r.get("val_mean_dice"))) for r in curve if r.get("val_mean_dice")]
    out["best_val"] = max((v for _, v in out["curve"]), default=float("nan"))
    scal = _read_csv(res_dir / "train_scalars.csv") if (res_dir / "train_scalars.csv").exists() else []
    out["scalars"] = scal
    last = scal[-max(1, len(scal) // 5) :] if scal else []

    def late_mean(key_part: str) -> float:
        keys = [k for k in (scal[0].keys() if scal else []) if k.endswith(key_part)]
        vals = [_num(r[keys[0]]) for r in last if keys and r.get(keys[0])]
        vals = [v for v in vals if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    for key in (
        "mask_ratio",
        "codebook_usage",
        "codebook_perplexity",
        "codebook_batch_distinct",
        "loss_sup",
        "loss_unsup",
        "loss_vq",
        "loss_rec_unlabeled",
        "loss_rec",
        "loss_align",
    ):
        out[f"late_{key}"] = late_mean(key)
    epoch_usage = [_num(r.get("codebook_epoch_usage")) for r in scal if r.get("codebook_epoch_usage")]
    out["last_codebook_epoch_usage"] = epoch_usage[-1] if epoch_usage else float("nan")
    if math.isnan(out["late_loss_rec_unlabeled"]):  # runs since the loss module: one reconstruction term
        out["late_loss_rec_unlabeled"] = out["late_loss_rec"]
    return out


def _f(v: float, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v * scale:.{digits}f}"


def _plot(protocol: str, labeled: int, runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for variant, s in runs.items():
        if s["curve"]:
            xs, ys = zip(*s["curve"], strict=True)
            axes[0].plot(xs, [100 * y for y in ys], marker="o", label=variant)
        scal = s["scalars"]
        if scal and "mask_ratio" in scal[0]:
            pts = [(int(r["iteration"]), _num(r["mask_ratio"])) for r in scal if r.get("mask_ratio")]
            if pts:
                axes[1].plot(*zip(*pts, strict=True), label=variant)
    axes[0].set(xlabel="iteration", ylabel="validation mean Dice (%)", title=f"ACDC {protocol}, {labeled} labeled")
    axes[1].set(xlabel="iteration", ylabel="confident pseudo-label fraction", title="mask ratio (threshold 0.95)")
    _save_figure(fig, axes, path)


def _save_figure(fig: Any, axes: Sequence[Any], path: Path, dpi: int = 80) -> None:
    """Grid and legend on every axis, then the PNG (``dpi``) at ``path``."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def build_report(results_dir: Path, docs_dir: Path, docs_file: Path) -> str:
    """Markdown of every run under ``results_dir/acdc_*``; writes the curve PNGs into ``docs_dir``."""
    lines: list[str] = [
        "Generated by `scripts/benchmark_acdc.py` from the raw results in "
        f"`{_rel(results_dir)}/acdc_<protocol>/` (per-case and summary CSVs, learning curves, commands, logs). "
        "Validation split: the 20 ACDC validation volumes (10 patients), not the literature's 40-volume test split. "
        "Dice / Jaccard in %, HD95 / ASD in voxels (mean of the per-class means over volumes where the "
        "structure was predicted; *missed* = (volume, class) pairs with an empty prediction). "
        "Model evaluated: the EMA teacher at its best validation mean Dice (`model.pt`), via `configs/evaluate.yaml`.",
        "",
    ]
    protocol_dirs = sorted(p for p in results_dir.glob("acdc_*") if p.is_dir())
    if not protocol_dirs:
        return "Not run yet.\n"
    lines += build_side_by_side(results_dir, docs_dir, docs_file)
    order = list(VARIANTS)
    for pdir in protocol_dirs:
        protocol = pdir.name[len("acdc_") :]
        for ldir in sorted(pdir.glob("labeled*"), key=lambda p: int(p.name[len("labeled") :] or 0)):
            labeled = int(ldir.name[len("labeled") :])
            records = {}
            for rdir in ldir.iterdir():
                if (rdir / "run.json").exists():
                    records[rdir.name] = (rdir, json.loads((rdir / "run.json").read_text()))
            if not records:
                continue
            names = sorted(
                records,
                key=lambda n: (
                    order.index(variant_of(n)[0]) if variant_of(n)[0] in order else len(order),
                    variant_of(n)[1],
                ),
            )
            any_rec = records[names[0]][1]
            env = any_rec.get("environment", {})
            lines += [
                f"### Protocol `{protocol}`, {labeled} labeled patients",
                "",
                f"Schedule: {any_rec.get('protocol_description', '')}; seed 0 unless the name says `_seed<N>`. "
                f"Machine: {any_rec.get('machine', '?')} ({env.get('cpu', '?')}); run {env.get('date', '?')}; "
                f"Python {env.get('python')}, PyTorch {env.get('torch')}, MONAI {env.get('monai')}, "
                f"ignite {env.get('ignite')}, git {env.get('git')}.",
                "",
                *([PROTOCOLS[protocol].notes, ""] if protocol in PROTOCOLS and PROTOCOLS[protocol].notes else []),
                "| variant | Dice | Jaccard | HD95 | ASD | missed | best val Dice | train min | eval min |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            summaries: dict[str, dict[str, Any]] = {}
            failed = []
            for name in names:
                rdir, rec = records[name]
                if rec.get("status") != "ok":
                    failed.append((name, rec))
                    continue
                s = summarize_run(rdir)
                summaries[name] = s
                lines.append(
                    f"| {name} | {_f(s['dice'], 100)} | {_f(s['jaccard'], 100)} | {_f(s['hd95_vox'])} | "
                    f"{_f(s['asd_vox'])} | {s['missed']} | {_f(s['best_val'], 100)} | "
                    f"{_f(rec.get('train_seconds', float('nan')), 1 / 60)} | "
                    f"{_f(rec.get('eval_seconds', float('nan')), 1 / 60)} |"
                )
            for name, rec in failed:
                lines.append(f"| {name} | failed ({rec.get('status')}) | | | | | | | |")
            if summaries:
                lines += [
                    "",
                    "Per class (RV / Myo / LV):",
                    "",
                    "| variant | Dice | Jaccard | HD95 | ASD |",
                    "| --- | --- | --- | --- | --- |",
                ]
                for name, s in summaries.items():
                    pc = s["per_class"]
                    cells = [
                        " / ".join(_f(pc[c][m], scale, 1) for c in CLASS_NAMES)
                        for m, scale in (("dice", 100), ("jaccard", 100), ("hd95_vox", 1), ("asd_vox", 1))
                    ]
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
                lines += [
                    "",
                    "Training diagnostics (means over the last 20 % of logged iterations): confident pseudo-label "
                    "fraction (mask ratio), codebook usage (fraction of codes hit per logging window), "
                    "perplexity, distinct codes per batch (fraction of the batch's tokens; 1 / tokens at "
                    "collapse) and codes used over the last epoch (fraction of K; K per variant description); the "
                    "last two were not logged before 2026-12-02; loss terms.",
                    "",
                    "| variant | mask ratio | code usage | perplexity | distinct / batch | epoch usage "
                    "| L_sup | L_unsup | L_vq | L_rec | L_align |",
                    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                ]
                for name, s in summaries.items():
                    lines.append(
                        f"| {name} | {_f(s['late_mask_ratio'], 1, 3)} | {_f(s['late_codebook_usage'], 1, 4)} | "
                        f"{_f(s['late_codebook_perplexity'], 1, 0)} | {_f(s['late_codebook_batch_distinct'], 1, 3)} | "
                        f"{_f(s['last_codebook_epoch_usage'], 1, 4)} | "
                        f"{_f(s['late_loss_sup'], 1, 3)} | "
                        f"{_f(s['late_loss_unsup'], 1, 3)} | {_f(s['late_loss_vq'], 1, 3)} | "
                        f"{_f(s['late_loss_rec_unlabeled'], 1, 3)} | {_f(s['late_loss_align'], 1, 3)} |"
                    )
                if "labeled_only" in summaries and not math.isnan(
                    summaries["labeled_only"].get("late_mask_ratio", math.nan)
                ):
                    # runs from before the trainer skipped the unlabeled branch of labeled-only training
                    lines += [
                        "",
                        "(labeled_only: the trainer still computed the teacher's pseudo-labels, so its mask "
                        "ratio and L_unsup are logged, but their loss weight was 0.)",
                    ]
                lines += _target_lines(protocol, labeled, summaries)
                png = docs_dir / f"acdc_curves_{protocol}_{labeled}.png"
                _plot(protocol, labeled, summaries, png)
                lines += ["", f"![learning curves]({os.path.relpath(png, docs_file.parent)})", ""]
            for name, rec in failed:
                lines += [
                    f"`{name}` failed: command `{rec.get('train_command')}`",
                    "",
                    "```",
                    rec.get("error_tail", "")[-1500:],
                    "```",
                    "",
                ]
            lines += ["Variants:", ""]
            for name in names:
                rec = records[name][1]
                lines.append(
                    f"* `{name}`: {rec.get('variant_description')}; overrides `{json.dumps(rec.get('overrides'))}`"
                )
            lines += ["", f"Exact commands: `{_rel(ldir)}/<variant>/run.json`.", ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- side by side
PEER_RESULTS = REPO.parent / "shared" / "peers" / "results"
SIDE_BY_SIDE_PROTOCOL = "cpu_peer"
SIDE_BY_SIDE_POINTS = (500, 1000, 1500, 2000)
#: peer rows: (label, file stem); files ``<stem>_s<seed>.csv`` (3 patients) and ``<stem>_l7.csv`` (7 patients, seed 0)
PEER_ROWS = (("peer supervised", "supervised_64"), ("peer UniMatch", "unimatch_64"))


def _peer_curves(peers_dir: Path, stem: str, labeled: int) -> tuple[list[dict[int, float]], list[float]]:
    """Mean-Dice curves (%) of the peer's own runs, one ``{iteration: dice}`` per seed, and their wall minutes
    (the CSV's ``seconds`` at the last row)."""
    files = (
        sorted(peers_dir.glob(f"{stem}_s*.csv")) if labeled == 3 else sorted(peers_dir.glob(f"{stem}_l{labeled}.csv"))
    )
    curves, minutes = [], []
    for f in files:
        rows = [r for r in _read_csv(f) if r.get("iter", "").isdigit()]
        curves.append({int(r["iter"]): _num(r["mean"]) for r in rows})
        minutes.append(_num(rows[-1].get("seconds")) / 60 if rows else float("nan"))
    return curves, minutes


def _bundle_curves(ldir: Path) -> dict[str, list[tuple[dict[int, float], dict[str, Any]]]]:
    """``{variant: [(curve {iteration: dice %}, run.json), ...]}`` over the seeds finished under ``ldir``."""
    out: dict[str, list] = {}
    for rdir in sorted(ldir.iterdir()) if ldir.exists() else []:
        rec_path = rdir / "run.json"
        if not rec_path.exists() or not (rdir / "curve.csv").exists():
            continue
        rec = json.loads(rec_path.read_text())
        if rec.get("status") != "ok":
            continue
        curve = {
            int(r["iteration"]): 100 * _num(r["val_mean_dice"])
            for r in _read_csv(rdir / "curve.csv")
            if r.get("val_mean_dice")
        }
        out.setdefault(variant_of(rdir.name)[0], []).append((curve, rec))
    return out


def _mean_range(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return ""
    mean = sum(values) / len(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ({min(values):.1f}-{max(values):.1f})"


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def build_side_by_side(results_dir: Path, docs_dir: Path, docs_file: Path, peers_dir: Path = PEER_RESULTS) -> list[str]:
    """The bundle's ``cpu_peer`` runs beside the peer's own runs: validation mean Dice (%) at equal iteration
    counts (mean and range over seeds), the issue's targets, and a learning-curve plot per labeled count."""
    pdir = results_dir / f"acdc_{SIDE_BY_SIDE_PROTOCOL}"
    if not pdir.exists():
        return []
    lines = [
        "### Side by side with the UniMatch peer (protocol `cpu_peer`)",
        "",
        f"{PROTOCOLS[SIDE_BY_SIDE_PROTOCOL].description}. Validation mean Dice (%) on the 20 volumes at the given "
        "iteration, mean over seeds (range in brackets); *best* = the best validation point of each run, averaged. "
        "**Peer rows are the peer's own code** (`../shared/peers/run_unimatch_cpu.py`, curves in "
        "`../shared/peers/results/`); bundle rows are `python scripts/benchmark_acdc.py run --protocol cpu_peer "
        "--variants \"['<variant>']\" --seed <N>` (commands in each `run.json`).",
        "",
    ]
    for ldir in sorted(pdir.glob("labeled*"), key=lambda p: int(p.name[len("labeled") :] or 0)):
        labeled = int(ldir.name[len("labeled") :])
        bundle = _bundle_curves(ldir)
        rows: list[tuple[str, str, list[dict[int, float]], list[float]]] = []
        for label, stem in PEER_ROWS:
            curves, minutes = _peer_curves(peers_dir, stem, labeled)
            if curves:
                rows.append((label, "peer's own code", curves, minutes))
        order = list(VARIANTS)
        for variant in sorted(bundle, key=lambda v: order.index(v) if v in order else len(order)):
            runs = bundle[variant]
            rows.append(
                (variant, "bundle", [c for c, _ in runs], [r.get("train_seconds", float("nan")) / 60 for _, r in runs])
            )
        lines += [
            f"#### {labeled} labeled patients",
            "",
            "| row | code | seeds | " + " | ".join(str(p) for p in SIDE_BY_SIDE_POINTS) + " | best | train min |",
            "| --- | --- | --- | " + " | ".join("---" for _ in SIDE_BY_SIDE_POINTS) + " | --- | --- |",
        ]
        finals: dict[str, float] = {}
        for label, code, curves, minutes in rows:
            cells = [_mean_range([c.get(p, float("nan")) for c in curves]) for p in SIDE_BY_SIDE_POINTS]
            best = _mean_range([max(c.values()) for c in curves if c])
            finals[label] = _mean([c.get(SIDE_BY_SIDE_POINTS[-1], float("nan")) for c in curves])
            lines.append(
                f"| {label} | {code} | {len(curves)} | " + " | ".join(cells) + f" | {best} | {_mean_range(minutes)} |"
            )
        lines += ["", *_side_by_side_targets(finals, labeled), ""]
        png = docs_dir / f"acdc_side_by_side_{labeled}.png"
        _plot_side_by_side(rows, labeled, png)
        lines += [f"![side by side]({os.path.relpath(png, docs_file.parent)})", ""]
    return lines


def _side_by_side_targets(finals: dict[str, float], labeled: int) -> list[str]:
    """The targets of "Semi-supervision that works", on the means at the last iteration (points)."""
    out = ["Targets (means at the last iteration):", ""]

    def check(text: str, value: float, ok: bool) -> None:
        if not math.isnan(value):
            out.append(f"* {text}: {value:+.1f} points: {'met' if ok else 'missed'}")

    sup, uni = finals.get("peer supervised", math.nan), finals.get("peer UniMatch", math.nan)
    lab, bun = finals.get("labeled_only", math.nan), finals.get("unimatch", math.nan)
    vq = {k: v for k, v in finals.items() if k.startswith("vq") and not math.isnan(v)}
    if labeled == 3:
        check("bundle labeled_only - peer supervised (within 3)", lab - sup, abs(lab - sup) <= 3)
        check("bundle unimatch - peer UniMatch (within 2)", bun - uni, abs(bun - uni) <= 2)
        check("bundle unimatch - bundle labeled_only (>= +10)", bun - lab, bun - lab >= 10)
        if vq:
            best = max(vq, key=vq.get)
            check(f"best VQ-Seg variant ({best}) - bundle unimatch (>= +2)", vq[best] - bun, vq[best] - bun >= 2)
            worst = min(vq, key=vq.get)
            check(f"worst VQ-Seg variant ({worst}) - labeled_only (>= 0)", vq[worst] - lab, vq[worst] - lab >= 0)
    else:
        semi = {
            k: v for k, v in finals.items() if not k.startswith("peer") and k != "labeled_only" and not math.isnan(v)
        }
        for k, v in semi.items():
            check(f"{k} - labeled_only (>= 0)", v - lab, v - lab >= 0)
    return out if len(out) > 2 else []


def _plot_side_by_side(rows: list, labeled: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, code, curves, _ in rows:
        points = sorted({p for c in curves for p in c})
        means = [_mean([c.get(p, float("nan")) for c in curves]) for p in points]
        ax.plot(
            points,
            means,
            marker="o",
            linestyle="--" if code.startswith("peer") else "-",
            label=f"{label} ({len(curves)})",
        )
    ax.set(
        xlabel="iteration",
        ylabel="validation mean Dice (%)",
        title=f"ACDC, {labeled} labeled, 64 px, batch 4 + 4, SGD (dashed: peer's own code)",
    )
    _save_figure(fig, [ax], path)


def _target_lines(protocol: str, labeled: int, summaries: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's targets, checked against this table (mean Dice, percentage points).

    CPU protocol, 3 patients: vqseg_full >= 15 points above labeled_only and above dropout_mt (shown for the
    strict reading, >= 15 above both, and the lenient one, > 0 above dropout_mt). GPU protocols: mean Dice
    >= 89.0 (3 patients) / 90.0 (7 patients).
    """
    full = summaries.get("vqseg_full")
    if full is None:
        return []
    out = ["", "Targets:", ""]
    for base in ("labeled_only", "dropout_mt"):
        if base in summaries:
            gain = 100 * (full["dice"] - summaries[base]["dice"])
            verdict = "met" if gain >= 15 else ("above, but by less than 15" if gain > 0 else "missed")
            out.append(f"* vqseg_full vs {base}: {gain:+.1f} Dice points (target: >= +15): {verdict}")
    if protocol.startswith("gpu"):
        goal = 89.0 if labeled == 3 else 90.0
        out.append(
            f"* vqseg_full mean Dice {100 * full['dice']:.1f} (target >= {goal:.1f}): "
            f"{'met' if 100 * full['dice'] >= goal else 'missed'}"
        )
    return out


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def write_section(
    docs_file: Path, body: str, start: str = MARK_START, end: str = MARK_END, heading: str = "ACDC benchmark"
) -> None:
    """Replace the text between the ``start`` / ``end`` markers of ``docs_file`` (added under ``## heading`` at the
    end when missing)."""
    text = docs_file.read_text() if docs_file.exists() else "# Measured results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + start + "\n" + body + end + tail
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + start + "\n" + body + end + "\n"
    docs_file.parent.mkdir(parents=True, exist_ok=True)
    docs_file.write_text(text)


# ---------------------------------------------------------------------------------------------- CLI
def _as_list(value: Any, name: str) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, str)):
        return [value]
    raise ValueError(f"--{name} must be a value or a list, got {value!r}")


def unpack_dataset(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a dataset archive (e.g. ``acdc_8bit.tar.xz``, the copy that travels to a GPU machine) once.

    Args:
        archive: a tar archive (any compression ``tarfile`` reads) of an ACDC folder in the SSL4MIS layout.
        dest: folder to unpack into; a finished unpack leaves ``dest/.unpacked`` and is not repeated.

    Returns:
        The unpacked folder that holds ``train_slices.list`` (``dest`` or one of its subfolders).

    Raises:
        FileNotFoundError: the archive is missing.
        ValueError: the archive is not a tar file, has unsafe member paths, or holds no ``train_slices.list``.
    """
    import tarfile

    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: dataset archive not found")
    marker = dest / ".unpacked"
    if not (marker.exists() and marker.read_text() == str(archive.resolve())):
        if not tarfile.is_tarfile(archive):
            raise ValueError(f"{archive}: not a tar archive")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # "data" refuses absolute paths, "..", links out of dest
        marker.write_text(str(archive.resolve()))
    found = sorted(dest.rglob("train_slices.list"), key=lambda p: len(p.parts))
    if not found:
        raise ValueError(f"{archive}: holds no train_slices.list (expected an ACDC folder in the SSL4MIS layout)")
    return found[0].parent


def _path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else (REPO / p)


class Benchmark:
    """ACDC benchmark of VQ-Seg and its baselines (see the module docstring)."""

    def variants(self) -> None:
        """Print every variant, its description and its config overrides (under the cpu protocol)."""
        for name in VARIANTS:
            print(f"{name}: {VARIANTS[name]['description']}")
            print(f"    {json.dumps(variant_overrides(name, PROTOCOLS['cpu']))}")
        for p in PROTOCOLS.values():
            print(f"protocol {p.name}: {p.description}; overrides {json.dumps(p.schedule_overrides())}")

    def env(self) -> None:
        """Print the environment record (versions, CPU / GPU, git commit)."""
        print(json.dumps(environment(), indent=2))

    def run(
        self,
        protocol: str = "cpu",
        labeled: Any = (3, 7),
        variants: Any = DEFAULT_VARIANTS,
        dataset_dir: str = DEFAULT_DATASET_DIR,
        dataset_archive: str | None = None,
        work_dir: str = "outputs/benchmark",
        results_dir: str = "results",
        docs_file: str = "docs/results.md",
        docs_dir: str = "docs",
        seed: int = 0,
        extra: dict | None = None,
        iterations: int | None = None,
        val_every: int | None = None,
        force: bool = False,
        dry_run: bool = False,
        timeout: float | None = None,
        report: bool = True,
    ) -> None:
        """Train and evaluate ``variants`` x ``labeled`` under ``protocol``, then rewrite the report.

        Args:
            protocol: one of ``cpu``, ``gpu``, ``gpu_vit``, ``smoke``.
            labeled: labeled-patient counts (3 and/or 7: the dataset's ``labeled_<N>_cases.list``).
            variants: variant names (``variants`` lists them).
            dataset_dir: ACDC folder (SSL4MIS layout) or ``demo`` for the synthetic phantoms.
            dataset_archive: a tar archive of the ACDC folder (``acdc_8bit.tar.xz`` on a GPU machine): unpacked
                once under ``work_dir/dataset`` and used instead of ``dataset_dir``.
            work_dir: checkpoints, TensorBoard files, full logs (git-ignored).
            results_dir: small artefacts (``acdc_<protocol>/labeled<N>/<variant>/``).
            docs_file, docs_dir: the Markdown file whose ACDC section is rewritten, and where PNGs go.
            seed: training seed (``monai.utils.set_determinism`` and the trainer's generator).
            extra: further config overrides for every run, e.g. ``{'dinov2_weights': PATH}``.
            iterations, val_every: replace the protocol's budget (then all variants of this call share it;
                results are written under the same protocol name: use with care).
            force: rerun runs whose ``run.json`` already says ok.
            dry_run: print the commands only.
            timeout: seconds allowed per subprocess (``None``: no limit).
            report: rewrite the docs section at the end.
        """
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        proto = PROTOCOLS[protocol]
        if iterations is not None or val_every is not None:
            proto = replace(
                proto, iterations=int(iterations or proto.iterations), val_every=int(val_every or proto.val_every)
            )
        proto.schedule_overrides()  # validates the schedule
        counts = [int(n) for n in _as_list(labeled, "labeled")]
        names = [str(v) for v in _as_list(variants, "variants")]
        for name in names:
            if name not in VARIANTS:
                raise ValueError(f"--variants: unknown variant {name!r}; expected one of {sorted(VARIANTS)}")
        if dataset_archive:
            dataset_dir = str(unpack_dataset(dataset_archive, _path(work_dir) / "dataset"))
        if dataset_dir not in ("demo", "") and not Path(dataset_dir).exists():
            raise ValueError(f"--dataset_dir {dataset_dir!r} does not exist (give the ACDC folder or 'demo')")
        if extra is not None and not isinstance(extra, dict):
            raise ValueError(f"--extra must be a dict of config overrides, got {extra!r}")
        env = environment()
        print("benchmark command:", shlex.join([sys.executable, *sys.argv]), flush=True)
        print("environment:", json.dumps(env), flush=True)
        print("machine:", machine_label(env), flush=True)
        records = []
        for n in counts:
            for name in names:
                records.append(
                    run_one(
                        proto,
                        name,
                        n,
                        dataset_dir,
                        _path(work_dir),
                        _path(results_dir),
                        seed,
                        extra,
                        env,
                        force,
                        dry_run,
                        timeout,
                    )
                )
        print("\nstatus:", flush=True)
        for r in records:
            print(
                f"  labeled {r['labeled']} {r['variant']}: {r['status']} "
                f"(train {r.get('train_seconds', '-')} s, eval {r.get('eval_seconds', '-')} s)",
                flush=True,
            )
        if report and not dry_run:
            self.report(results_dir=results_dir, docs_file=docs_file, docs_dir=docs_dir)
        self.records = records  # for callers that use the class directly (tests); fire prints nothing

    def report(self, results_dir: str = "results", docs_file: str = "docs/results.md", docs_dir: str = "docs") -> None:
        """Rebuild the ACDC section of ``docs_file`` (and the curve PNGs) from ``results_dir``."""
        body = build_report(_path(results_dir), _path(docs_dir), _path(docs_file))
        write_section(_path(docs_file), body)
        print(f"wrote the ACDC section of {_path(docs_file)}", flush=True)


if __name__ == "__main__":
    fire.Fire(Benchmark)
