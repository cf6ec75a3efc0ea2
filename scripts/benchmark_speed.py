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

Examples::

    # the CPU report (docs/results.md): both backbones, eps 0.1 and 0.7, few iterations
    python scripts/benchmark_speed.py --device cpu --warmup 3 --iterations 5
    # GPU: fp32 and bf16 + channels-last, more iterations, validation amortised
    python scripts/benchmark_speed.py --device cuda --variants fp32,bf16_cl --iterations 50 --validation
    # one configuration, JSON written for later comparison
    python scripts/benchmark_speed.py --backbone unet --eps 0.7 --data monai --json /tmp/unet.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a plain checkout

BACKBONES = ("unet", "vit")
#: precision / memory-format / compile variants: trainer switches of configs/train.yaml
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
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


def run_one(args: argparse.Namespace, backbone: str, eps: float, variant: str) -> dict:
    """Build the trainer from the bundle configs, run it, and return the measurements."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser
    from monai.engines.utils import IterationEvents

    from vqseg_bundle.engines import unwrap_model
    from vqseg_bundle.networks.qpm import QuantizedPerturbation

    device = torch.device(args.device)
    # CUDA: a first set for ms/it (no sync inside the iteration), a second for the breakdown
    per_set = int(args.iterations)
    total = int(args.warmup) + per_set * (2 if device.type == "cuda" else 1)
    files = [str(ROOT / "configs" / "train.yaml"), str(ROOT / "configs" / "recipe_paper.yaml")]
    if backbone == "vit":
        files.append(str(ROOT / "configs" / "train_dinov2.yaml"))
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(ROOT)
    # validation runs every val_interval epochs of the *configured* schedule: amortise over that
    val_every = int(parser["val_interval"]) * int(parser["iterations_per_epoch"])
    for k, v in _overrides(args, backbone, eps, variant, total).items():
        parser[k] = v
    for k, v in (args.set or {}).items():
        parser[k] = v
    _set_data_backend(parser, args.data)
    handlers = [h for h in parser["train#handlers"] if str(h.get("_target_", "")).split(".")[-1] in KEPT_HANDLERS]
    parser["train#handlers"] = handlers
    parser.parse(True)
    parser.get_parsed_content("initialize")  # determinism, threads, data checks: as the bundle does
    t_build = time.perf_counter()
    trainer = parser.get_parsed_content("train#trainer")
    build_s = time.perf_counter() - t_build
    net = unwrap_model(trainer.network)

    clock = _Clock(device)
    records: list[dict[str, float]] = []
    marks: dict[str, float] = {}

    def _mark(name: str):
        def handler(_engine) -> None:
            marks[name] = clock.now()

        return handler

    def _start(engine) -> None:
        it = engine.state.iteration  # the one about to start (ignite increments before ITERATION_STARTED)
        clock.enabled = device.type != "cuda" or it >= int(args.warmup) + per_set
        if it == int(args.warmup) and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        clock.reset()
        marks.clear()
        marks["start"] = time.perf_counter()

    def _end(engine) -> None:
        _sync(device)
        end = time.perf_counter()
        if engine.state.iteration <= int(args.warmup):
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

    trainer.add_event_handler(Events.GET_BATCH_STARTED, _start)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, _mark("got_batch"))
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, _mark("loss"))
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, _mark("backward"))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _end)  # after every other handler

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

    val_ms = None
    if args.validation:
        evaluator = parser.get_parsed_content("validate#evaluator")
        _sync(device)
        tv = time.perf_counter()
        evaluator.run()
        _sync(device)
        val_ms = (time.perf_counter() - tv) * 1000.0

    timed = [r for r in records if not r["breakdown"] or device.type != "cuda"]
    broken = [r for r in records if r["breakdown"]]
    ms = statistics.median(r["total"] for r in timed) * 1000.0
    shares = {}
    if broken:
        tot = sum(r["total"] for r in broken)
        shares = {k: 100.0 * sum(r[k] for r in broken) / tot for k in PARTS}
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "backbone": backbone,
        "eps": float(eps),
        "variant": variant,
        "data": args.data,
        "batch": f"{parser['batch_size_labeled']}+{parser['batch_size_unlabeled']}x2",
        "image_size": int(parser["image_size"]),
        "ms_per_it": ms,
        "ms_min": min(r["total"] for r in timed) * 1000.0,
        "n_timed": len(timed),
        "shares": shares,
        "peak_mib": peak_mib,
        "peak_kind": "cuda_alloc" if device.type == "cuda" else "cpu_rss",
        "build_s": build_s,
        "run_s": run_s,
        "val_ms": val_ms,
        "val_every": val_every,
    }


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
    p.add_argument("--dataset_dir", default="demo", help="'demo' (synthetic phantoms) or an ACDC folder")
    p.add_argument("--data_cache_dir", default="", help="where the demo data is generated (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation", action="store_true", help="also time one validation pass (amortised)")
    p.add_argument(
        "--set", type=json.loads, default=None, help="extra config overrides as JSON, e.g. '{\"codebook_size\": 1024}'"
    )
    p.add_argument("--json", default="", help="write all results (and the environment) to this JSON file")
    p.add_argument("--inprocess", action="store_true", help="run configurations in this process (no peak RSS per run)")
    p.add_argument("--_single", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
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


def main(argv: list[str] | None = None) -> list[dict]:
    args = _parse_args(argv)
    if args._single:
        b, e, v = args._single.split("|")
        print("RESULT " + json.dumps(run_one(args, b, float(e), v)), flush=True)
        return []
    configs = [
        (b, float(e), v)
        for b in args.backbone.split(",")
        for v in args.variants.split(",")
        for e in args.eps.split(",")
    ]
    results = []
    passthrough = list(argv if argv is not None else sys.argv[1:])
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
