"""Training-speed benchmark of the real VQ-Seg training iteration (not a test: it prints one table).

What is timed is what users run: the trainer is built from ``configs/train.yaml`` + ``configs/recipe_paper.yaml``
(the VQ-Seg recipe: quantized bottleneck, QPM on the strong views, EMA teacher; plus ``configs/train_dinov2.yaml``
for the ViT) with ``monai.bundle.ConfigParser`` and a few overrides (the
schedule, QPM eps, precision / memory-format / compile switches, the data backend), and its ignite
``run()`` executes ``warmup + iterations`` iterations. Per-iteration handlers users run are kept (LR
schedule, EMA teacher, codebook usage, NaN logger); validation, checkpoints, TensorBoard and the
progress bar are left out of the per-iteration figure, and validation is timed separately
(``--validation``) and reported amortised over its interval (``val_interval x iterations_per_epoch``).

Per configuration (backbone x eps x variant) it reports:

* ``ms/it``: median wall time of one iteration (ignite's ``GET_BATCH_STARTED`` to the end of
  ``ITERATION_COMPLETED``), the device synchronised at both ends;
* ``peak``: peak device memory (CUDA ``max_memory_allocated``) or, on CPU, the process's peak RSS
  (each configuration runs in its own subprocess, so this is that configuration's own peak);
* the share of the iteration spent in: ``data`` (labeled + unlabeled batch, augmentation, copy to the
  device), ``teacher`` (EMA teacher forward on the weak view), ``student`` (student forward, both
  branches, QPM included), ``qpm`` (the Quantized Perturbation Module alone), ``backward`` (loss
  backward), ``optim`` (guarded optimizer step + EMA + handlers), ``other`` (CutMix, frozen foundation
  model, loss terms). On CUDA the breakdown comes from a second set of iterations in which every
  range is synchronised (so the overlap that the plain ``ms/it`` enjoys is removed there); on CPU
  there is nothing to overlap and one set serves both.

``--protocol cpu_peer`` times instead the step of the ACDC benchmark's ``cpu_peer`` protocol (issue 25 item 3):
the trainer built from the protocol's config files and overrides (``vqseg_bundle.benchmarks.protocols.PROTOCOLS``)
and each variant's (``vqseg_bundle.benchmarks.variants.variant_overrides``; default ``unimatch`` and
``vqp_unimatch_qpm_all``), on ``../shared/data/acdc`` when it exists (else the demo data), 64 px, batch 4 + 4, 3
labeled patients. One row per variant x path x threads x run, each measured in its own process:

* ``path``: ``fp32`` = protocol ``cpu_peer`` (the peer's fp32 recipe), ``fast`` = protocol ``cpu_peer_fast``
  (the same recipe with bf16 autocast + channels-last);
* ``threads``: torch threads (and OMP_NUM_THREADS) of the measured run;
* ``run``: ``alone``, or ``beside`` a second run of the same configuration with one thread, started (and warm)
  before the measurement and ended after it (as two benchmark runs share the 2 cores);
* ``ms/it`` (median) and ``min ms``: wall time of one iteration, as above (validation, checkpoints, logging out);
* ``GFLOP/it``: FLOPs of one more (untimed) iteration of the real step, counted by
  ``torch.utils.flop_counter.FlopCounterMode``: every matmul / convolution forward and backward of the iteration
  (teacher / pseudo-label forwards and batch augmentation included; elementwise ops, which it does not count, out);
* ``GFLOP/s``: ``GFLOP/it`` / ``ms/it``, the rate achieved;
* ``matmul peak GFLOP/s``: the best rate of an N x N @ N x N matmul (``--peak_size``, default 2048) measured by
  this script at the row's threads, in float32 for ``fp32`` rows and bfloat16 for ``fast`` rows (measured first,
  nothing else of ours running; second table); ``% of peak`` = ``GFLOP/s`` / that peak;
* ``x peer``: ``ms/it`` / the peer's ``ms/it`` at the same threads and run;
* the rows ``UniMatch peer (own code)``: ``../shared/peers/run_unimatch_cpu.py unimatch`` (the peer's own dataset,
  U-Net and step, fp32) at the same size, batch, labeled count and seed, run unmodified under a timing shim that
  stamps every optimizer step (one interval = one iteration of its loop, data included); its second run
  ``beside`` is the peer's too. Skipped (a row saying why) without the ACDC data or the peer script.

Above the table: the CPU model (/proc/cpuinfo), logical cores, whether avx512_bf16 / amx flags are present, torch's
CPU capability, torch version and date; ``--json`` writes all of it with every measurement.

Examples::

    # the CPU report (docs/results.md): both backbones, eps 0.1 and 0.7, few iterations
    python scripts/benchmark_speed.py --device cpu --warmup 3 --iterations 5
    # GPU: fp32 and bf16 + channels-last, more iterations, validation amortised
    python scripts/benchmark_speed.py --device cuda --variants fp32,bf16_cl --iterations 50 --validation
    # one configuration, JSON written for later comparison
    python scripts/benchmark_speed.py --backbone unet --eps 0.7 --data monai --json /tmp/unet.json
    # the cpu_peer step table (issue 25): fp32 vs fast, 1 and 2 threads, alone and beside a second run, FLOPs,
    # % of the matmul peak, the UniMatch peer beside; run it on an otherwise idle machine (about 15-20 minutes)
    python scripts/benchmark_speed.py --protocol cpu_peer --warmup 5 --iterations 20 --json results/speed_cpu_peer.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a plain checkout

BACKBONES = ("unet", "vit")
#: precision / memory-format / compile variants: trainer switches of configs/train.yaml
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"amp": False, "channels_last": False},
    "tf32": {"float32_matmul_precision": "high"},
    "bf16": {"amp": True, "amp_dtype": "bfloat16"},
    "bf16_cl": {"amp": True, "amp_dtype": "bfloat16", "channels_last": True},
    "compile": {"compile": True},
    "bf16_cl_compile": {"amp": True, "amp_dtype": "bfloat16", "channels_last": True, "compile": True},
}
#: data backends: "monai" = DataLoader + per-sample MONAI transforms (workers); "batched" = slices held in
#: memory on the training device, whole batches augmented there (vqseg_bundle.data.device_loader)
DATA_BACKENDS = ("monai", "batched")
#: per-iteration training handlers kept from train#handlers (the others run per epoch or are I/O)
KEPT_HANDLERS = ("LrScheduleHandler", "EMATeacher", "CodebookUsageHandler", "NaNSkipLogger")
PARTS = ("data", "teacher", "student", "qpm", "backward", "optim", "other")


# ---------------------------------------------------------------------------------------------- one run
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Accumulates synchronised wall time per named range for the current iteration."""

    def __init__(self, device) -> None:
        self.device = device
        self.enabled = False  # synchronise inside the iteration only while True
        self.acc: dict[str, float] = {}

    def reset(self) -> None:
        self.acc = {}

    def add(self, name: str, seconds: float) -> None:
        self.acc[name] = self.acc.get(name, 0.0) + seconds

    def now(self) -> float:
        if self.enabled:
            _sync(self.device)
        return time.perf_counter()


class _TimedIter:
    """Iterator wrapper charging the time of ``next()`` to ``name``."""

    def __init__(self, it, clock: _Clock, name: str) -> None:
        self.it, self.clock, self.name = it, clock, name

    def __iter__(self):
        return self

    def __next__(self):
        t0 = self.clock.now()
        batch = next(self.it)
        self.clock.add(self.name, self.clock.now() - t0)
        return batch


class _TimedCall:
    """Callable wrapper charging its calls to ``name``; forwards ``train()`` / attributes to the module."""

    def __init__(self, fn, clock: _Clock, name: str) -> None:
        self.fn, self.clock, self.name = fn, clock, name

    def __call__(self, *args, **kwargs):
        t0 = self.clock.now()
        out = self.fn(*args, **kwargs)
        self.clock.add(self.name, self.clock.now() - t0)
        return out

    def __getattr__(self, item):
        return getattr(self.fn, item)


def _overrides(args: argparse.Namespace, backbone: str, eps: float, variant: str, total_iters: int) -> dict:
    ov: dict[str, Any] = {
        "dataset_dir": args.dataset_dir,
        "qpm_eps": float(eps),
        "epochs": 1,
        "iterations_per_epoch": int(total_iters),
        "progress_bar": False,
        "num_workers": int(args.num_workers),
        "num_threads": int(args.threads),
        "device": f"$torch.device({args.device!r})",
        "seed": int(args.seed),
    }
    if args.data_cache_dir:
        ov["data_cache_dir"] = args.data_cache_dir
    if backbone == "vit":
        ov["pretrained"] = False  # random weights, explicitly: no weights can be downloaded here
    ov.update(VARIANTS[variant])
    return ov


def _set_data_backend(parser, backend: str) -> None:
    """Select the data path: the config's own switch when it has one, else replace the two loaders."""
    if backend not in DATA_BACKENDS:
        raise ValueError(f"--data must be one of {DATA_BACKENDS}, got {backend!r}")
    if "augmentation_backend" in parser.get("", {}):
        parser["augmentation_backend"] = backend
        return
    if backend == "monai":
        return
    common = {
        "_target_": "vqseg_bundle.data.device_loader.DeviceBatchLoader",
        "device": "@device",
        "seed": "@seed",
        "drop_last": True,
    }
    parser["train#dataloader"] = {
        **common,
        "dataset": "$@splits.labeled",
        "batch_size": "@batch_size_labeled",
        "augmentation": "$vqseg_bundle.transforms.batched.BatchedLabeledAugment(**@weak_aug)",
    }
    parser["train#unlabeled_dataloader"] = {
        **common,
        "dataset": "$@splits.unlabeled",
        "batch_size": "@batch_size_unlabeled",
        "augmentation": {
            "_target_": "vqseg_bundle.transforms.batched.BatchedUnlabeledAugment",
            "weak": "@weak_aug",
            "strong": "@strong_aug",
        },
    }


def _configured_parser(files: list[str], overrides: dict, extra: dict | None, data: str | None):
    """The bundle's ``ConfigParser`` over ``files`` with ``overrides`` then ``extra`` applied, the data backend
    ``data`` selected (``None``: the config's own), the per-iteration handlers kept, parsed and initialised.

    Returns:
        ``(parser, val_every)``: ``val_every`` is the validation interval in iterations of the *configured* schedule
        (before ``overrides``), over which validation is amortised.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(ROOT)
    val_every = int(parser["val_interval"]) * int(parser["iterations_per_epoch"])
    for k, v in overrides.items():
        parser[k] = v
    for k, v in (extra or {}).items():
        parser[k] = v
    if data is not None:
        _set_data_backend(parser, data)
    handlers = [h for h in parser["train#handlers"] if str(h.get("_target_", "")).split(".")[-1] in KEPT_HANDLERS]
    parser["train#handlers"] = handlers
    parser.parse(True)
    parser.get_parsed_content("initialize")  # determinism, threads, data checks: as the bundle does
    return parser, val_every


def _time_trainer(trainer, device, warmup: int, per_set: int, flops: bool = False) -> dict:
    """Run ``trainer`` for ``warmup`` untimed + ``per_set`` timed iterations (twice ``per_set`` on CUDA: the second
    set synchronised for the breakdown), then, with ``flops``, one more iteration under
    ``torch.utils.flop_counter.FlopCounterMode`` (not timed); the trainer is stopped after that many iterations.

    Returns:
        ``{"records": [per timed iteration: total and breakdown seconds], "run_s", "flops": int | None}``.
    """
    import torch
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents
    from vqseg_bundle.engines import unwrap_model
    from vqseg_bundle.networks.qpm import QuantizedPerturbation

    net = unwrap_model(trainer.network)
    timed_total = int(warmup) + per_set * (2 if device.type == "cuda" else 1)
    total = timed_total + int(bool(flops))
    clock = _Clock(device)
    records: list[dict[str, float]] = []
    marks: dict[str, float] = {}
    counter: dict[str, Any] = {}

    def _mark(name: str):
        def handler(_engine) -> None:
            marks[name] = clock.now()

        return handler

    def _start(engine) -> None:
        it = engine.state.iteration  # the one about to start (ignite increments before ITERATION_STARTED)
        clock.enabled = device.type != "cuda" or it >= int(warmup) + per_set
        if it == int(warmup) and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        clock.reset()
        marks.clear()
        if flops and it == timed_total:
            from torch.utils.flop_counter import FlopCounterMode

            counter["mode"] = FlopCounterMode(display=False)
            counter["mode"].__enter__()
        marks["start"] = time.perf_counter()

    def _end(engine) -> None:
        _sync(device)
        end = time.perf_counter()
        if "mode" in counter and engine.state.iteration == timed_total + 1:
            counter["mode"].__exit__(None, None, None)
            counter["flops"] = int(counter.pop("mode").get_total_flops())
            return
        if engine.state.iteration <= int(warmup):
            return
        rec = {"total": end - marks["start"], "breakdown": float(clock.enabled)}
        if clock.enabled:
            acc = dict(clock.acc)
            rec["data"] = acc.get("data", 0.0) + (marks.get("got_batch", marks["start"]) - marks["start"])
            rec["teacher"] = acc.get("teacher", 0.0)
            rec["student"] = acc.get("student", 0.0)
            rec["qpm"] = acc.get("qpm", 0.0)
            rec["backward"] = marks.get("backward", 0.0) - marks.get("loss", 0.0)
            rec["optim"] = end - marks.get("backward", end)
            rec["other"] = rec["total"] - sum(rec[k] for k in PARTS if k not in ("qpm", "other"))
        records.append(rec)

    def _stop(engine) -> None:
        if engine.state.iteration >= total:
            engine.terminate()

    trainer.add_event_handler(Events.GET_BATCH_STARTED, _start)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, _mark("got_batch"))
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, _mark("loss"))
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, _mark("backward"))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _end)  # after every other handler
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _stop)

    def _wrap_unlabeled(engine) -> None:  # after the trainer's own STARTED handler created the iterator
        engine._unlabeled_iter = _TimedIter(engine._unlabeled_iter, clock, "data")

    trainer.add_event_handler(Events.STARTED, _wrap_unlabeled)
    trainer.prepare_batch = _TimedCall(trainer.prepare_batch, clock, "data")
    trainer.prepare_unlabeled_batch = _TimedCall(trainer.prepare_unlabeled_batch, clock, "data")
    trainer._teacher_forward = _TimedCall(trainer._teacher_forward, clock, "teacher")
    trainer.student_step = _TimedCall(trainer.student_step, clock, "student")
    for m in net.modules():
        if isinstance(m, QuantizedPerturbation):
            m.register_forward_pre_hook(lambda mod, inp: marks.__setitem__("qpm0", clock.now()))
            m.register_forward_hook(lambda mod, inp, out: clock.add("qpm", clock.now() - marks["qpm0"]))

    t0 = time.perf_counter()
    trainer.run()
    run_s = time.perf_counter() - t0
    if "mode" in counter:  # the run ended before the counted iteration did
        counter.pop("mode").__exit__(None, None, None)
    if len(records) < per_set:
        raise RuntimeError(f"the trainer stopped after {len(records)} timed iterations, {per_set} asked for")
    return {"records": records, "run_s": run_s, "flops": counter.get("flops")}


def _summary(records: list[dict], device) -> dict:
    """Median / min ms per iteration and the breakdown shares (%) of the timed ``records``."""
    timed = [r for r in records if not r["breakdown"] or device.type != "cuda"]
    broken = [r for r in records if r["breakdown"]]
    shares = {}
    if broken:
        tot = sum(r["total"] for r in broken)
        shares = {k: 100.0 * sum(r[k] for r in broken) / tot for k in PARTS}
    return {
        "ms_per_it": statistics.median(r["total"] for r in timed) * 1000.0,
        "ms_min": min(r["total"] for r in timed) * 1000.0,
        "n_timed": len(timed),
        "shares": shares,
    }


def _peak_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(args: argparse.Namespace, backbone: str, eps: float, variant: str) -> dict:
    """Build the trainer from the bundle configs, run it, and return the measurements."""
    import torch

    device = torch.device(args.device)
    # CUDA: a first set for ms/it (no sync inside the iteration), a second for the breakdown
    per_set = int(args.iterations)
    total = int(args.warmup) + per_set * (2 if device.type == "cuda" else 1)
    files = [str(ROOT / "configs" / "train.yaml"), str(ROOT / "configs" / "recipe_paper.yaml")]
    if backbone == "vit":
        files.append(str(ROOT / "configs" / "train_dinov2.yaml"))
    parser, val_every = _configured_parser(files, _overrides(args, backbone, eps, variant, total), args.set, args.data)
    t_build = time.perf_counter()
    trainer = parser.get_parsed_content("train#trainer")
    build_s = time.perf_counter() - t_build
    timing = _time_trainer(trainer, device, int(args.warmup), per_set)

    val_ms = None
    if args.validation:
        evaluator = parser.get_parsed_content("validate#evaluator")
        _sync(device)
        tv = time.perf_counter()
        evaluator.run()
        _sync(device)
        val_ms = (time.perf_counter() - tv) * 1000.0

    return {
        "backbone": backbone,
        "eps": float(eps),
        "variant": variant,
        "data": args.data,
        "batch": f"{parser['batch_size_labeled']}+{parser['batch_size_unlabeled']}x2",
        "image_size": int(parser["image_size"]),
        **_summary(timing["records"], device),
        "peak_mib": _peak_mib(device),
        "peak_kind": "cuda_alloc" if device.type == "cuda" else "cpu_rss",
        "build_s": build_s,
        "run_s": timing["run_s"],
        "val_ms": val_ms,
        "val_every": val_every,
    }


# ------------------------------------------------------------------------------- protocol mode (cpu_peer)
#: --protocol: the benchmark protocol of each path (configs/benchmarks/acdc_protocols.yaml): fp32 = the protocol
#: itself, fast = the same recipe on the fast CPU path (bf16 autocast + channels-last)
PROTOCOL_PATHS: dict[str, dict[str, str]] = {"cpu_peer": {"fp32": "cpu_peer", "fast": "cpu_peer_fast"}}
#: the matmul dtype whose peak a path is compared with
PATH_DTYPE = {"fp32": "float32", "fast": "bfloat16"}
#: the variants (configs/benchmarks/acdc_variants.yaml) timed by default: UniMatch and the VQ-Seg variant
PROTOCOL_VARIANTS = ("unimatch", "vqp_unimatch_qpm_all")
#: "alone": nothing else of ours runs; "beside": a second run of the same configuration (1 thread) runs concurrently
RUNS = ("alone", "beside")
ACDC_DIR = ROOT.parent / "shared" / "data" / "acdc"
PEER_SCRIPT = ROOT.parent / "shared" / "peers" / "run_unimatch_cpu.py"
PEER_NAME = "UniMatch peer (own code)"
#: the CPU flags reported with the machine (native bf16 / AMX, the vector width)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
#: a companion run (the second run of "beside") exits by itself after this many seconds or when its parent is gone
COMPANION_MAX_S = 3600.0
#: how long a companion may take to build and warm up before the row is given up
COMPANION_READY_S = 600.0

#: Runs the peer's script unmodified (runpy) under a timing shim: a global optimizer step post-hook stamps each
#: ``step()``, so the interval between two stamps is one whole iteration of the peer's loop (batches, both forwards,
#: backward, step). Environment: VQSEG_FLOPS_AT=k counts the FLOPs of iteration k+1 (from the k-th stamp to the
#: next; not timed); VQSEG_EXIT_AFTER=n prints the record and exits after the n-th stamp (the peer's final
#: validation is not needed); VQSEG_READY_FILE is created after VQSEG_READY_AFTER stamps (companion runs);
#: VQSEG_MAX_S ends the process after that many seconds or when its parent is gone.
PEER_SHIM = """
import json, os, runpy, sys, threading, time
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.flop_counter import FlopCounterMode

stamps, counter = [], {}
env = os.environ.get
flops_at, exit_after = int(env("VQSEG_FLOPS_AT", "0")), int(env("VQSEG_EXIT_AFTER", "0"))
ready, ready_after = env("VQSEG_READY_FILE", ""), int(env("VQSEG_READY_AFTER", "1"))
max_s, parent = float(env("VQSEG_MAX_S", "0")), os.getppid()


def report():
    print("PEER_TIMING " + json.dumps({"stamps": stamps, "flops": counter.get("flops")}), flush=True)


def hook(optimizer, args, kwargs):
    stamps.append(time.perf_counter())
    n = len(stamps)
    if "mode" in counter and n == flops_at + 1:
        counter.pop("mode").__exit__(None, None, None)
        counter["flops"] = int(counter["counted"].get_total_flops())
    if flops_at and n == flops_at:
        counter["mode"] = counter["counted"] = FlopCounterMode(display=False)
        counter["mode"].__enter__()
    if ready and n == ready_after:
        open(ready, "w").close()
    if exit_after and n >= exit_after:
        report()
        sys.stdout.flush()
        os._exit(0)


def watchdog():
    t0 = time.monotonic()
    while True:
        time.sleep(1.0)
        if os.getppid() != parent or time.monotonic() - t0 > max_s:
            os._exit(0)


if max_s > 0:
    threading.Thread(target=watchdog, daemon=True).start()
register_optimizer_step_post_hook(hook)
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    report()
"""


def cpu_machine() -> dict:
    """The CPU: model name (/proc/cpuinfo), logical cores, the flags of :data:`CPU_FLAGS` present, torch's CPU
    capability and whether bf16 is native (AVX-512 BF16 or AMX-BF16)."""
    import torch

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first processor's lines
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    present = {f: f in flags for f in CPU_FLAGS}
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        capability = "unknown"
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "flags": present,
        "native_bf16": present["avx512_bf16"] or present["amx_bf16"],
        "torch_cpu_capability": capability,
    }


def matmul_peak(dtype: str, threads: int, size: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of a ``size x size`` by ``size x size`` matmul (``2 size^3`` FLOPs) in ``dtype`` with ``threads``
    torch threads: the best of ``repeats`` timed products after one untimed (the peak this CPU reaches), and their
    median. torch's thread count is restored afterwards."""
    import torch

    dt = getattr(torch, dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen).to(dt)
        b = torch.randn(size, size, generator=gen).to(dt)
        out = torch.empty(size, size, dtype=dt)
        torch.mm(a, b, out=out)
        times = []
        for _ in range(max(1, int(repeats))):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    flop = 2.0 * size**3
    return {
        "dtype": dtype,
        "threads": int(threads),
        "size": int(size),
        "gflops": flop / min(times) / 1e9,
        "gflops_median": flop / statistics.median(times) / 1e9,
    }


def _protocol_parts(args: argparse.Namespace, path: str):
    """The :class:`~vqseg_bundle.benchmarks.protocols.Protocol` of ``path`` under ``--protocol``."""
    from vqseg_bundle.benchmarks.protocols import PROTOCOLS

    return PROTOCOLS[PROTOCOL_PATHS[args.protocol][path]]


def protocol_overrides(args: argparse.Namespace, variant: str, path: str, threads: int, out_dir: str) -> dict:
    """The config overrides of one ``cpu_peer`` row, composed as the ACDC benchmark does
    (:func:`vqseg_bundle.benchmarks.commands.build_commands`): data and run folders, the protocol's schedule, the
    variant's overrides; then the row's torch threads and the device. ``--set`` is applied after these."""
    from vqseg_bundle.benchmarks.variants import variant_overrides

    protocol = _protocol_parts(args, path)
    return {
        "bundle_root": str(ROOT),
        "dataset_dir": args.dataset_dir,
        "labeled": f"labeled_{int(args.labeled)}_cases",
        "output_dir": out_dir,
        "ckpt_dir": str(Path(out_dir) / "models"),
        **({"data_cache_dir": args.data_cache_dir} if args.data_cache_dir else {}),
        "seed": int(args.seed),
        "progress_bar": False,
        **protocol.schedule_overrides(),
        **variant_overrides(variant, protocol),
        "num_threads": int(threads),
        "device": "$torch.device('cpu')",
    }


def _protocol_trainer(args: argparse.Namespace, spec: dict, out_dir: str, companion: bool = False):
    """``(parser, trainer)`` of one row (``spec``: variant, path, threads); a companion's schedule is made endless."""
    protocol = _protocol_parts(args, spec["path"])
    overrides = protocol_overrides(args, spec["variant"], spec["path"], int(spec["threads"]), out_dir)
    if companion:
        overrides["epochs"] = 10**6  # runs until the measured row is done (or COMPANION_MAX_S)
    files = [str(ROOT / f) for f in protocol.config_files]
    parser, _ = _configured_parser(files, overrides, args.set, None)
    return parser, parser.get_parsed_content("train#trainer")


def run_protocol_row(args: argparse.Namespace, spec: dict) -> dict:
    """Time one ``cpu_peer`` row in this process: ``spec`` = ``{"variant", "path", "threads", "flops"}``."""
    import torch

    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as out_dir:
        t_build = time.perf_counter()
        parser, trainer = _protocol_trainer(args, spec, out_dir)
        build_s = time.perf_counter() - t_build
        timing = _time_trainer(trainer, device, int(args.warmup), int(args.iterations), flops=bool(spec.get("flops")))
        return {
            **{k: spec[k] for k in ("variant", "path", "threads", "run")},
            "protocol": PROTOCOL_PATHS[args.protocol][spec["path"]],
            "batch": f"{parser['batch_size_labeled']}+{parser['batch_size_unlabeled']}",
            "image_size": int(parser["image_size"]),
            "amp": bool(parser["amp"]),
            "amp_dtype": str(parser["amp_dtype"]),
            "channels_last": bool(parser["channels_last"]),
            "torch_threads": torch.get_num_threads(),
            **_summary(timing["records"], device),
            "flops": timing["flops"],
            "peak_mib": _peak_mib(device),
            "build_s": build_s,
            "run_s": timing["run_s"],
        }


def _start_watchdog(max_s: float) -> None:
    """End this process after ``max_s`` seconds or as soon as its parent is gone (companion runs never linger)."""
    parent, t0 = os.getppid(), time.monotonic()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent or time.monotonic() - t0 > max_s:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def run_companion(args: argparse.Namespace, spec: dict) -> None:
    """The second run of a "beside" row: the same configuration, trained until killed; creates the file named by
    ``VQSEG_READY_FILE`` once ``--warmup`` iterations (at least one) are done."""
    from ignite.engine import Events

    _start_watchdog(float(os.environ.get("VQSEG_MAX_S", COMPANION_MAX_S)))
    ready, ready_after = os.environ.get("VQSEG_READY_FILE", ""), max(1, int(args.warmup))
    with tempfile.TemporaryDirectory(prefix="bench_speed_companion_") as out_dir:
        _, trainer = _protocol_trainer(args, spec, out_dir, companion=True)

        def _ready(engine) -> None:
            if ready and engine.state.iteration == ready_after:
                Path(ready).touch()

        trainer.add_event_handler(Events.ITERATION_COMPLETED, _ready)
        trainer.run()


def _thread_env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


class _Beside:
    """Context manager: a companion subprocess ``cmd`` (one thread) started and warm (it created its ready file)
    before the body runs, and ended after it; ``survived`` says whether it was still running at the end, i.e. the
    whole measurement had it beside."""

    def __init__(self, cmd: list[str], env_extra: dict | None = None, ready_timeout: float = COMPANION_READY_S):
        self.cmd, self.env_extra, self.ready_timeout = cmd, dict(env_extra or {}), ready_timeout
        self.proc: subprocess.Popen | None = None
        self.survived = False
        self.last_output = ""

    def __enter__(self) -> _Beside:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench_speed_beside_")
        ready = Path(self._tmp.name) / "ready"
        self._log_path = Path(self._tmp.name) / "companion.log"
        self._log = open(self._log_path, "w")
        env = _thread_env(1, {**self.env_extra, "VQSEG_READY_FILE": str(ready), "VQSEG_MAX_S": str(COMPANION_MAX_S)})
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        try:
            while not ready.exists():
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the second run exited ({self.proc.returncode}) before it was warm: {self.tail()}"
                    )
                if time.monotonic() - t0 > self.ready_timeout:
                    raise RuntimeError(f"the second run was not warm after {self.ready_timeout:.0f} s: {self.tail()}")
                time.sleep(0.1)
        except BaseException:
            self._close()
            raise
        return self

    def tail(self, n: int = 300) -> str:
        self._log.flush()
        text = self._log_path.read_text(errors="replace").strip()
        return text[-n:] or "no output"

    def __exit__(self, *exc) -> None:
        self.survived = self.proc is not None and self.proc.poll() is None
        self.last_output = self.tail()
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._tmp.cleanup()


def _self_cmd(passthrough: list[str], flag: str, spec: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *passthrough, flag, json.dumps(spec)]


def _row_subprocess(passthrough: list[str], spec: dict) -> dict:
    """One bundle row in its own process (its threads in OMP_NUM_THREADS too, its own peak RSS)."""
    proc = subprocess.run(
        _self_cmd(passthrough, "--_row", spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_thread_env(spec["threads"]),
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"error": _error_line(proc)}
    return json.loads(lines[-1][len("RESULT ") :])


def _error_line(proc: subprocess.CompletedProcess) -> str:
    err_lines = (proc.stderr or proc.stdout or "").strip().splitlines() or [f"exit code {proc.returncode}"]
    named = [ln for ln in err_lines if "Error" in ln or "error" in ln]
    return (named or err_lines)[-1][:200]


def peer_skip_reason(args: argparse.Namespace) -> str | None:
    """Why the peer rows cannot run here (``None``: they can): no peer script, or no ACDC data in the SSL4MIS
    layout that the peer reads (the demo data is the bundle's own format)."""
    if not args.peer or args.peer == "none":
        return "--peer none"
    if not Path(args.peer).is_file():
        return f"no peer script at {args.peer}"
    if not (Path(args.dataset_dir) / "data" / "slices").is_dir():
        return f"the peer reads the ACDC data (SSL4MIS layout); dataset_dir is {args.dataset_dir!r}"
    return None


def peer_command(args: argparse.Namespace, threads: int, iters: int, out_dir: str) -> list[str]:
    """The peer's own UniMatch run at the protocol's size and batch (``--set`` image_size wins), under the shim."""
    protocol = _protocol_parts(args, "fp32")
    size = int((args.set or {}).get("image_size", protocol.image_size))
    batch = int((args.set or {}).get("batch_size_labeled", protocol.batch_labeled))
    return [
        sys.executable,
        "-c",
        PEER_SHIM,
        str(Path(args.peer).resolve()),
        "unimatch",
        str(Path(args.dataset_dir).resolve()),
        out_dir,
        *("--size", str(size), "--batch", str(batch), "--iters", str(iters), "--val_every", str(iters)),
        *("--threads", str(int(threads)), "--labeled", str(int(args.labeled)), "--seed", str(int(args.seed))),
    ]


def parse_peer_timing(stdout: str, warmup: int, iterations: int) -> dict:
    """ms per iteration from the shim's ``PEER_TIMING`` line: the intervals between optimizer steps, the first
    ``warmup`` dropped (the first iteration has no interval: it is always untimed), the next ``iterations`` kept."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("PEER_TIMING ")]
    if not lines:
        raise RuntimeError("the peer printed no PEER_TIMING line")
    rec = json.loads(lines[-1][len("PEER_TIMING ") :])
    stamps = rec["stamps"]
    intervals = [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)][warmup : warmup + iterations]
    if len(intervals) < iterations:
        raise RuntimeError(f"the peer made {len(stamps)} optimizer steps, {warmup + iterations + 1} needed")
    return {
        "ms_per_it": statistics.median(intervals) * 1000.0,
        "ms_min": min(intervals) * 1000.0,
        "n_timed": len(intervals),
        "flops": rec.get("flops"),
    }


def run_peer_row(args: argparse.Namespace, spec: dict) -> dict:
    """The peer's step time (and, with ``spec["flops"]``, FLOPs of one more iteration) at ``spec["threads"]``."""
    warmup, iterations = int(args.warmup), int(args.iterations)
    steps = warmup + iterations + 1 + int(bool(spec.get("flops")))
    env = {"VQSEG_EXIT_AFTER": str(steps)}
    if spec.get("flops"):
        env["VQSEG_FLOPS_AT"] = str(steps - 1)
    with tempfile.TemporaryDirectory(prefix="bench_speed_peer_") as out_dir:
        t0 = time.perf_counter()
        proc = subprocess.run(
            peer_command(args, spec["threads"], steps, out_dir),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=_thread_env(spec["threads"], env),
            timeout=float(args.peer_timeout),
        )
    try:
        timing = parse_peer_timing(proc.stdout, warmup, iterations)
    except (RuntimeError, ValueError, KeyError) as exc:
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"error": f"{exc}; {_error_line(proc)}"[:200]}
    return {**timing, "wall_s": time.perf_counter() - t0}


def protocol_rows(args: argparse.Namespace) -> list[dict]:
    """The rows of the ``--protocol`` table, in order: every variant x path x threads x run, then the peer's
    threads x run; the first row of each (variant, path) and of the peer also counts the FLOPs of one iteration."""
    specs = []
    for v in args.acdc_variants.split(","):
        for path in args.paths.split(","):
            for i, (t, run) in enumerate((t, r) for t in _ints(args.thread_counts) for r in args.runs.split(",")):
                specs.append({"variant": v, "path": path, "threads": t, "run": run, "flops": i == 0})
    if args.peer != "none":
        for i, (t, run) in enumerate((t, r) for t in _ints(args.thread_counts) for r in args.runs.split(",")):
            specs.append({"variant": PEER_NAME, "path": "fp32", "threads": t, "run": run, "flops": i == 0})
    return specs


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def _measure_row(args: argparse.Namespace, passthrough: list[str], spec: dict) -> dict:
    """One row: for "beside", the second run (the same configuration, one thread; the peer's own for the peer row)
    is started and warm first and ended after; the row is an error if it did not last the whole measurement."""
    is_peer = spec["variant"] == PEER_NAME
    with contextlib.ExitStack() as stack:
        beside = None
        if spec["run"] == "beside":
            if is_peer:
                comp_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_speed_peer_companion_"))
                cmd = peer_command(args, 1, 10**7, comp_dir)
                env_extra = {"VQSEG_READY_AFTER": str(max(1, int(args.warmup)))}
            else:
                cmd, env_extra = _self_cmd(passthrough, "--_companion", {**spec, "threads": 1, "flops": False}), {}
            beside = stack.enter_context(_Beside(cmd, env_extra))
        if is_peer:
            r = run_peer_row(args, spec)
        elif args.inprocess:
            r = run_protocol_row(args, spec)
        else:
            r = _row_subprocess(passthrough, spec)
    if beside is not None and not beside.survived and "error" not in r:
        r = {"error": f"the second run ended before the measurement did: {beside.last_output}"}
    return r


def run_protocol(args: argparse.Namespace, passthrough: list[str]) -> dict:
    """Every row of the ``--protocol`` table (each bundle row in its own process unless ``--inprocess``), the
    matmul peaks, and the machine; returns ``{"machine", "environment", "peaks", "results"}``."""
    peaks = []
    if int(args.peak_size) > 0:  # first, with nothing of ours running beside
        for dtype in ("float32", "bfloat16"):
            for t in _ints(args.thread_counts):
                peaks.append(matmul_peak(dtype, t, int(args.peak_size), int(args.peak_repeats)))
                print(f"# matmul peak {dtype} {t} thread(s): {peaks[-1]['gflops']:.1f} GFLOP/s", file=sys.stderr)
    skip_peer = peer_skip_reason(args)
    results = []
    for spec in protocol_rows(args):
        t0 = time.perf_counter()
        base = {k: spec[k] for k in ("variant", "path", "threads", "run")}
        if spec["variant"] == PEER_NAME and skip_peer:
            r = {"skipped": skip_peer}
        else:
            try:
                r = _measure_row(args, passthrough, spec)
            except Exception as exc:  # keep going: one failing row must not hide the others
                r = {"error": repr(exc)[:200]}
        r = {**base, **{k: v for k, v in r.items() if k not in base}, "wall_s": time.perf_counter() - t0}
        results.append(r)
        print("# result " + json.dumps(r), file=sys.stderr, flush=True)  # partial results survive an interruption
        done = f"{r['ms_per_it']:.1f} ms/it" if "ms_per_it" in r else r.get("error") or r.get("skipped")
        print(f"# done {r['variant']} {r['path']} {r['threads']}t {r['run']}: {done}", file=sys.stderr, flush=True)
    _fill_derived(results, peaks)
    return {"machine": cpu_machine(), "environment": environment("cpu", 0), "peaks": peaks, "results": results}


def _fill_derived(results: list[dict], peaks: list[dict]) -> None:
    """FLOPs per iteration copied to every row of the same (variant, path); achieved GFLOP/s, the matmul peak of the
    path's dtype at the row's threads, % of that peak, and the ratio to the peer's row at the same threads and run."""
    flops = {(r["variant"], r["path"]): r["flops"] for r in results if r.get("flops")}
    peak = {(p["dtype"], p["threads"]): p["gflops"] for p in peaks}
    peer = {(r["threads"], r["run"]): r["ms_per_it"] for r in results if r["variant"] == PEER_NAME and "ms_per_it" in r}
    for r in results:
        if "ms_per_it" not in r:
            continue
        r["flops"] = flops.get((r["variant"], r["path"]))
        if r["flops"]:
            r["gflops_per_s"] = r["flops"] / (r["ms_per_it"] / 1000.0) / 1e9
            r["peak_dtype"] = PATH_DTYPE[r["path"]]
            r["peak_gflops"] = peak.get((r["peak_dtype"], r["threads"]))
            if r["peak_gflops"]:
                r["pct_of_peak"] = 100.0 * r["gflops_per_s"] / r["peak_gflops"]
        if r["variant"] != PEER_NAME and (r["threads"], r["run"]) in peer:
            r["x_peer"] = r["ms_per_it"] / peer[(r["threads"], r["run"])]


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_protocol_table(report: dict) -> str:
    """The markdown table of a ``--protocol`` report (rows, then the matmul peaks)."""
    head = (
        "| variant | path | threads | run | ms/it | min ms | GFLOP/it | GFLOP/s | matmul peak GFLOP/s | % of peak "
        "| x peer |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["results"]:
        lead = f"| {r['variant']} | {r['path']} | {r['threads']} | {r['run']} |"
        if "ms_per_it" not in r:
            what = f"error: {r['error']}" if "error" in r else f"skipped: {r.get('skipped', '?')}"
            lines.append(f"{lead} {what} | | | | | | |")
            continue
        gflop = r["flops"] / 1e9 if r.get("flops") else None
        peak = f"{r['peak_gflops']:.1f} ({r['peak_dtype']})" if r.get("peak_gflops") else "-"
        lines.append(
            f"{lead} {r['ms_per_it']:.1f} | {r['ms_min']:.1f} | {_fmt(gflop, '.2f')} | "
            f"{_fmt(r.get('gflops_per_s'))} | {peak} | {_fmt(r.get('pct_of_peak'))} | {_fmt(r.get('x_peer'), '.2f')} |"
        )
    if report["peaks"]:
        lines += ["", "| matmul | dtype | threads | best GFLOP/s | median GFLOP/s |", "|---|---|---|---|---|"]
        for p in report["peaks"]:
            n = p["size"]
            lines.append(
                f"| {n}x{n} @ {n}x{n} | {p['dtype']} | {p['threads']} | {p['gflops']:.1f} | {p['gflops_median']:.1f} |"
            )
    return "\n".join(lines)


def machine_line(machine: dict) -> str:
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in machine["flags"].items())
    return (
        f"machine: {machine['cpu_model']}, {machine['cores']} logical cores; flags: {flags}; native bf16: "
        f"{'yes' if machine['native_bf16'] else 'no (bf16 emulated: the fast path may be slower)'}; torch CPU "
        f"capability {machine['torch_cpu_capability']}"
    )


# ---------------------------------------------------------------------------------------------- driver
def environment(device: str, threads: int = 0) -> dict:
    import monai
    import torch

    env = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_avg": "/".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads if threads > 0 else torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = "cpu"
    return env


def format_table(results: list[dict]) -> str:
    head = (
        "| backbone | batch | px | eps | variant | data | ms/it | peak MiB | "
        + " | ".join(f"{p} %" for p in PARTS)
        + " | val ms (amortised) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['backbone']} | | | {r['eps']} | {r['variant']} | {r['data']} | error: {r['error']} |")
            continue
        sh = r["shares"]
        cells = " | ".join(f"{sh[p]:.1f}" if p in sh else "-" for p in PARTS)
        val = "-"
        if r.get("val_ms") is not None:
            val = f"{r['val_ms']:.0f} ({r['val_ms'] / max(1, r['val_every']):.2f}/it)"
        lines.append(
            f"| {r['backbone']} | {r['batch']} | {r['image_size']} | {r['eps']} | {r['variant']} | {r['data']} | "
            f"{r['ms_per_it']:.1f} | {r['peak_mib']:.0f} | {cells} | {val} |"
        )
    return "\n".join(lines)


def _check_protocol_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from vqseg_bundle.benchmarks.variants import VARIANTS as ACDC_VARIANTS

    for v in args.acdc_variants.split(","):
        if v not in ACDC_VARIANTS:
            p.error(f"--acdc_variants: unknown {v!r}, expected variants of configs/benchmarks/acdc_variants.yaml")
    for path in args.paths.split(","):
        if path not in PROTOCOL_PATHS[args.protocol]:
            p.error(f"--paths: unknown {path!r}, expected a comma list of {tuple(PROTOCOL_PATHS[args.protocol])}")
    for run in args.runs.split(","):
        if run not in RUNS:
            p.error(f"--runs: unknown {run!r}, expected a comma list of {RUNS}")
    try:
        threads = _ints(args.thread_counts)
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        p.error(f"--thread_counts must be a comma list of positive integers, got {args.thread_counts!r}")
    if args.device != "cpu":
        p.error("--protocol times the CPU step: --device must be cpu")
    if args.dataset_dir != "demo" and not Path(args.dataset_dir).is_dir():
        p.error(f"--dataset_dir {args.dataset_dir!r} does not exist (give the ACDC folder or 'demo')")
    if args.peak_size < 0 or args.peak_repeats < 1:
        p.error("--peak_size must be >= 0 and --peak_repeats >= 1")


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="unet,vit", help="comma list of unet, vit")
    p.add_argument("--eps", default="0.1,0.7", help="comma list of QPM eps")
    p.add_argument("--variants", default="fp32", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--data", default="batched", help=f"data backend, one of {DATA_BACKENDS}")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:0)")
    p.add_argument("--iterations", type=int, default=20, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (compile happens here)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--num_workers", type=int, default=2, help="DataLoader workers of the monai backend")
    p.add_argument(
        "--dataset_dir",
        default=None,
        help=f"'demo' (synthetic phantoms) or an ACDC folder (default: demo; with --protocol: {ACDC_DIR} when it\n"
        "exists, else demo)",
    )
    p.add_argument("--data_cache_dir", default="", help="where the demo data is generated (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation", action="store_true", help="also time one validation pass (amortised)")
    p.add_argument(
        "--set", type=json.loads, default=None, help="extra config overrides as JSON, e.g. '{\"codebook_size\": 1024}'"
    )
    p.add_argument("--json", default="", help="write all results (and the environment) to this JSON file")
    p.add_argument("--inprocess", action="store_true", help="run configurations in this process (no peak RSS per run)")
    p.add_argument("--_single", default="", help=argparse.SUPPRESS)
    g = p.add_argument_group("--protocol mode: the benchmark protocol's training step (issue 25 item 3)")
    g.add_argument(
        "--protocol",
        default="",
        choices=["", *PROTOCOL_PATHS],
        help="time this protocol's step (configs/benchmarks/acdc_protocols.yaml) instead of --backbone / --eps /\n"
        "--variants: fp32 vs the fast path, threads, alone / beside a second run, FLOPs, %% of matmul peak, peer",
    )
    g.add_argument(
        "--acdc_variants",
        default=",".join(PROTOCOL_VARIANTS),
        help="comma list of variants of configs/benchmarks/acdc_variants.yaml",
    )
    g.add_argument("--paths", default="fp32,fast", help="comma list: fp32 (the protocol), fast (<protocol>_fast)")
    g.add_argument("--thread_counts", default="1,2", help="comma list of torch threads per measured run")
    g.add_argument("--runs", default=",".join(RUNS), help="comma list: alone, beside (a second 1-thread run beside)")
    g.add_argument("--labeled", type=int, default=3, help="labeled patients (labeled_<N>_cases; the peer's --labeled)")
    g.add_argument("--peer", default=str(PEER_SCRIPT), help="the peer's run_unimatch_cpu.py, or 'none' (no peer rows)")
    g.add_argument("--peer_timeout", type=float, default=1800.0, help="seconds one peer row may take")
    g.add_argument("--peak_size", type=int, default=2048, help="matmul size N of the peak (N x N @ N x N); 0: none")
    g.add_argument("--peak_repeats", type=int, default=5, help="timed matmuls per peak (the best is the peak)")
    g.add_argument("--_row", type=json.loads, default=None, help=argparse.SUPPRESS)
    g.add_argument("--_companion", type=json.loads, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dataset_dir is None:
        args.dataset_dir = str(ACDC_DIR) if args.protocol and ACDC_DIR.is_dir() else "demo"
    if args.protocol:
        _check_protocol_args(p, args)
    if args.iterations < 1 or args.warmup < 0:
        p.error("--iterations must be >= 1 and --warmup >= 0")
    for b in args.backbone.split(","):
        if b not in BACKBONES:
            p.error(f"--backbone: unknown {b!r}, expected a comma list of {BACKBONES}")
    for v in args.variants.split(","):
        if v not in VARIANTS:
            p.error(f"--variants: unknown {v!r}, expected a comma list of {tuple(VARIANTS)}")
    if args.data not in DATA_BACKENDS:
        p.error(f"--data must be one of {DATA_BACKENDS}, got {args.data!r}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda asked for, but torch sees no CUDA device")
    elif args.device != "cpu":
        p.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    return args


def main_protocol(args: argparse.Namespace, passthrough: list[str]) -> list[dict]:
    """The ``--protocol`` table: measure, print (machine, torch, date, command, table), write ``--json``."""
    report = run_protocol(args, passthrough)
    env = report["environment"]
    print(machine_line(report["machine"]))
    print(f"torch {env['torch']}, monai {env['monai']}, python {env['python']}; {env['date']}; load {env['load_avg']}")
    if os.getloadavg()[0] > (os.cpu_count() or 1) * 0.75:
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: timings are inflated")
    print(f"command: python scripts/benchmark_speed.py {' '.join(passthrough)}")
    protocols = ", ".join(f"{k} = protocol {v}" for k, v in PROTOCOL_PATHS[args.protocol].items())
    print(
        f"protocol {args.protocol} ({protocols}); data: {args.dataset_dir}, labeled {args.labeled}; "
        f"{args.warmup} warm-up + {args.iterations} timed iterations (median; min ms: the fastest)"
    )
    print(format_protocol_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**report, "args": vars(args)}, indent=2))
    return report["results"]


def main(argv: list[str] | None = None) -> list[dict]:
    args = _parse_args(argv)
    if args._single:
        b, e, v = args._single.split("|")
        print("RESULT " + json.dumps(run_one(args, b, float(e), v)), flush=True)
        return []
    if args._row is not None:
        print("RESULT " + json.dumps(run_protocol_row(args, args._row)), flush=True)
        return []
    if args._companion is not None:
        run_companion(args, args._companion)
        return []
    passthrough = list(argv if argv is not None else sys.argv[1:])
    if args.protocol:
        return main_protocol(args, passthrough)
    configs = [
        (b, float(e), v)
        for b in args.backbone.split(",")
        for v in args.variants.split(",")
        for e in args.eps.split(",")
    ]
    results = []
    for b, e, v in configs:
        t0 = time.perf_counter()
        if args.inprocess:
            try:
                r = run_one(args, b, e, v)
            except Exception as exc:  # keep going: one failing variant (e.g. compile) must not hide the others
                r = {"backbone": b, "eps": e, "variant": v, "data": args.data, "error": repr(exc)[:200]}
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), *passthrough, "--_single", f"{b}|{e}|{v}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                err_lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
                named = [ln for ln in err_lines if "Error" in ln or "error" in ln]
                r = {"backbone": b, "eps": e, "variant": v, "data": args.data, "error": (named or err_lines)[-1][:200]}
                print(proc.stderr[-3000:], file=sys.stderr)
            else:
                r = json.loads(lines[-1][len("RESULT ") :])
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        print("# result " + json.dumps(r), file=sys.stderr, flush=True)  # partial results survive an interrupted run
        print(
            f"# done {b} eps={e} {v}: " + (f"{r['ms_per_it']:.1f} ms/it" if "ms_per_it" in r else r["error"]),
            file=sys.stderr,
            flush=True,
        )
    env = environment(args.device, args.threads)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if args.device == "cpu" and os.getloadavg()[0] > (os.cpu_count() or 1):
        # measured on the 2-core CPU: with other processes running, OpenMP threads spin-waiting for a
        # descheduled peer made a small step 70x slower with 2 threads than with 1
        print(
            f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other processes compete, "
            "timings are inflated; prefer --threads 1 (or OMP_WAIT_POLICY=PASSIVE) on a shared machine"
        )
    print(f"command: python scripts/benchmark_speed.py {' '.join(passthrough)}")
    print(f"iterations: {args.warmup} warm-up + {args.iterations} timed (median); data backend: {args.data}")
    print(format_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"environment": env, "args": vars(args), "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
