"""Micro-benchmark of QPM (and, for scale, the nearest-code search) at several perturbation strengths.

Shows that QPM's cost does not explode with eps (the released VQ-Seg code loops over codes in Python:
57 ms at eps 0.1 and 394 ms at eps 0.7 per step on an H200). Not a test: it prints one table.

Examples:
    python scripts/benchmark_qpm.py                                   # U-Net bottleneck, CPU
    python scripts/benchmark_qpm.py --preset vit                      # ViT-S/14 deepest level
    python scripts/benchmark_qpm.py --device cuda --strategy dense    # on a GPU
    python scripts/benchmark_qpm.py --batch 8 --codebook_size 1024 --eps "[0.1,0.7]"
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

import fire
import torch

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

from vqseg_bundle.networks.qpm import QuantizedPerturbation
from vqseg_bundle.networks.quantizer import VectorQuantizer

PRESETS = {
    # B = 12 labeled + 12 unlabeled (U-Net recipe), 16 x 16 bottleneck of a 256 px slice, 256 channels
    "unet": dict(batch=24, grid=16, dim=256),
    # 4 unlabeled x 2 strong views (released VQ-Seg recipe), 16 x 16 tokens of a 224 px image, ViT-S width
    "vit": dict(batch=8, grid=16, dim=384),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main(
    preset: str = "unet",
    batch: int | None = None,
    grid: int | None = None,
    dim: int | None = None,
    codebook_size: int = 16384,
    eps: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
    mode: str = "kernel",
    strategy: str = "auto",
    temperature: float = 1.0,
    distance: str = "sqeuclidean",
    device: str = "cpu",
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    seed: int = 0,
) -> None:
    """Print QPM time (median ms per call over ``repeats``) for each eps.

    Args:
        preset: ``"unet"`` (B=24, 16x16 tokens, D=256) or ``"vit"`` (B=8, 16x16, D=384); the explicit
            ``batch`` / ``grid`` / ``dim`` arguments override it.
        codebook_size: K.
        eps: strengths to time.
        mode, strategy, temperature, distance: QPM arguments.
        device: ``"cpu"`` or ``"cuda"`` (synchronised around each call).
        repeats, warmup: timed and untimed calls per setting.
        threads: ``torch.set_num_threads`` (default: PyTorch's choice).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    cfg = dict(PRESETS[preset])
    cfg.update({k: v for k, v in dict(batch=batch, grid=grid, dim=dim).items() if v is not None})
    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    eps_values = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]

    torch.manual_seed(seed)
    quantizer = VectorQuantizer(cfg["dim"], codebook_size).to(dev)
    z = torch.randn(cfg["batch"], cfg["dim"], cfg["grid"], cfg["grid"], device=dev)
    with torch.no_grad():
        codebook = quantizer.mapped_codebook()
        indices = quantizer(z).indices
        search_ms = _time_ms(lambda: quantizer(z), dev, repeats, warmup)

    print(
        f"# QPM micro-benchmark  torch {torch.__version__}  device {dev}"
        + (
            f" ({torch.cuda.get_device_name(dev)})"
            if dev.type == "cuda"
            else f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )
    )
    print(
        f"# tokens B x N = {cfg['batch']} x {cfg['grid']}x{cfg['grid']}, K = {codebook_size}, "
        f"D = {cfg['dim']}, "
        f"mode = {mode}, strategy = {strategy}, T = {temperature}, distance = {distance}, median of {repeats}"
    )
    print(f"# reference: quantizer forward (mapping + nearest-code search + loss) = {search_ms:.2f} ms")
    print(f"{'eps':>6} | {'QPM ms':>9} | {'changed':>8} | {'ms per changed token (us)':>26}")
    print(f"{'-' * 6}-+-{'-' * 9}-+-{'-' * 8}-+-{'-' * 26}")
    for e in eps_values:
        qpm = QuantizedPerturbation(mode, e, temperature, distance, strategy)
        gen = torch.Generator(device=dev).manual_seed(seed)
        ms = _time_ms(lambda: qpm(indices, codebook, gen), dev, repeats, warmup)
        changed = (qpm(indices, codebook, gen) != indices).float().mean().item()
        n_changed = changed * indices.numel()
        per = f"{1000.0 * ms / n_changed:.2f}" if n_changed else "-"
        print(f"{e:>6.2f} | {ms:>9.2f} | {changed:>8.3f} | {per:>26}")


if __name__ == "__main__":
    fire.Fire(main)
