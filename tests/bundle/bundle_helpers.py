"""Shared settings of the end-to-end bundle tests: tiny images, networks and schedules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(ROOT / "configs" / "train.yaml")
PAPER = str(ROOT / "configs" / "recipe_paper.yaml")
DINOV2 = str(ROOT / "configs" / "train_dinov2.yaml")
MULTI_GPU = str(ROOT / "configs" / "multi_gpu_train.yaml")

#: a 64 px, 2 + 2 batch, 2 x 2 iteration U-Net run with validation every epoch
TINY = {
    "image_size": 64,
    "codebook_size": 32,
    "epochs": 2,
    "iterations_per_epoch": 2,
    "val_interval": 1,
    "batch_size_labeled": 2,
    "batch_size_unlabeled": 2,
    "num_workers": 0,
    "num_threads": 1,
    "log_every": 1,
    "progress_bar": False,
    "network_def#features": [8, 16, 32, 64, 64],
    # the orientation classifier trained before the network (train.yaml orientation_correction "auto"): a few steps
    "orientation_training#iterations": 3,
    "orientation_training#batch_size": 4,
}

#: a random-weight 4-block ViT (explicitly not pretrained) at 56 px: a 4 x 4 token grid
TINY_VIT = {
    "image_size": 56,
    "pretrained": False,
    "vit_kwargs": {"depth": 4, "embed_dim": 32, "num_heads": 2},
    "network_def#dpt_features": 8,
    "network_def#dpt_level_channels": [4, 4, 8, 8],
}


def cli_args(overrides: dict) -> list[str]:
    """``--key value`` pairs for ``python -m monai.bundle run`` (values as Python literals)."""
    args = []
    for k, v in overrides.items():
        args += [f"--{k}", repr(v) if not isinstance(v, str) else v]
    return args


def run_cli(args: list[str], timeout: int = 240, torchrun: int = 0) -> subprocess.CompletedProcess:
    """Run the bundle command line from the bundle root with the package importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("OMP_NUM_THREADS", "1")
    if torchrun:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
        cmd = head + ["-m", "monai.bundle", "run", "training"] + args
    else:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training"] + args
    # own process group, so that a timeout also ends torchrun's worker processes
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s:\n{out[-3000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def error_chain(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and of every exception it was raised from or during (MONAI's config parser wraps
    the original error in its own)."""
    chain, e = [], exc
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    return chain
