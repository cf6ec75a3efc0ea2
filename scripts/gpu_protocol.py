"""The literature's ACDC protocol in one GPU slot: checks, speed table and the headline variants, budgeted.

Driven by ``scripts/gpu_protocol.sh`` (which installs the carried wheels first); everything runs through the
project's own command-line tools, in this order, inside one wall-clock budget (``--budget``, default 480 s,
counted from ``--t0``, the shell script's start):

1. environment (``nvidia-smi``, versions, cores)                                      -> ``env.txt``
2. the CUDA / speed-path tests (``tests/speed``, QPM and quantizer tests), time-limited  -> ``tests.log``
3. the dataset archive unpacked once (a dry run of ``scripts/benchmark_acdc.py``)
4. the speed table (``scripts/benchmark_speed.py``: U-Net and ViT, fp32 and bf16 + channels-last, QPM eps 0.1 and
   0.7, then the compiled U-Net step), each invocation time-limited, partial rows kept  -> ``speed.md``
5. calibration: every variant trained ``--cal_iters`` iterations by ``benchmark_acdc.py run`` (in parallel on the
   one GPU, as the real runs will be) and evaluated; from the TensorBoard wall times of each run: the
   per-iteration time while all share the device, the validation time, the start-up overhead, and from its
   ``run.json`` the evaluation time
6. the plan: ``iterations = floor((time left - start-up - evaluation - packing - margin) / (val_every x slowest
   per-iteration time + validation time)) x val_every`` (sums instead of maxima when the runs are sequential)
7. the real runs, same schedule for every variant (``benchmark_acdc.py run --iterations N --val_every M``), each
   evaluated by the bundle's evaluation on the validation volumes; a run whose training is cut by the budget but
   left a ``model.pt`` is evaluated with its own logged evaluation command if time allows
8. packing: at most 8 files of at most 16 MiB into the output folder: ``summary.md`` (all tables),
   ``results.json``, ``protocol.tar.gz`` (tables, curves, logs, run records), ``model.pt`` + ``model.json`` (the
   best teacher by evaluated mean Dice) and ``protocol.log``.

Every knob has an environment-variable default (``BUDGET_S``, ``DEVICE``, ``VARIANTS``, ``VAL_EVERY``...), so the
same command smoke-tests on a CPU with a tiny budget (``tests/speed/test_speed_gpu_protocol.py``).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ("labeled_only", "unimatch", "vq_unimatch_qpm_dropout_guarded")
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "tf32": {"float32_matmul_precision": "high"},
    "bf16_cl": {"amp": True, "amp_dtype": "bfloat16", "channels_last": True},
}
CLASSES = ("RV", "Myo", "LV")


# ---------------------------------------------------------------------------------------------- small helpers
def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value != "" else default


def literal(text: str) -> Any:
    """A JSON or Python literal (``"{'amp': True}"``, ``'{"amp": true}'``, ``"['a', 'b']"``); ``""`` is ``None``."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)


def names(text: str) -> list[str]:
    """A comma list or a Python / JSON list of names."""
    value = literal(text) if text.strip().startswith("[") else text.split(",")
    return [str(v).strip() for v in value if str(v).strip()]


class Clock:
    """The budget: seconds since ``t0`` and seconds left until ``t0 + budget``."""

    def __init__(self, t0: float, budget: float) -> None:
        self.t0, self.budget = float(t0), float(budget)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


class Log:
    """Prints and appends to ``protocol.log``."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path, self.clock = path, clock

    def __call__(self, *parts: Any) -> None:
        line = f"[{self.clock.elapsed():6.1f} s] " + " ".join(str(p) for p in parts)
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def run_limited(
    cmd: list[str], log_path: Path, timeout: float, env: dict | None = None, label: str = ""
) -> tuple[int, float]:
    """Run ``cmd`` (from the bundle root) in its own process group, output to ``log_path``; kill the whole group
    after ``timeout`` seconds (the benchmark's training and evaluation are grandchildren). Returns (code, seconds);
    code 124 means killed at the limit."""
    start = time.time()
    with open(log_path, "a") as log:
        log.write("$ " + (label or " ".join(cmd)) + "\n")
        log.flush()
        if timeout <= 1:
            log.write("[gpu_protocol] skipped: no time left\n")
            return 124, 0.0
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )  # noqa: S603
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.write(f"\n[gpu_protocol] killed at its {timeout:.0f} s limit\n")
            code = 124
    return code, time.time() - start


def _kill_group(proc: subprocess.Popen) -> None:
    """End the process group this script started for ``proc`` (and only that one)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 25) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


# ---------------------------------------------------------------------------------------------- speed table
def speed_rows(stderr_log: Path) -> list[dict]:
    """The rows ``benchmark_speed.py`` reported so far (its ``# result {json}`` lines survive a kill)."""
    rows = []
    if stderr_log.exists():
        for line in stderr_log.read_text(errors="replace").splitlines():
            if line.startswith("# result "):
                try:
                    rows.append(json.loads(line[len("# result ") :]))
                except json.JSONDecodeError:
                    continue
    return rows


def speed_table(rows: list[dict]) -> str:
    """Markdown table of speed rows (``benchmark_speed.format_table`` when importable, else a short one)."""
    if not rows:
        return "(no speed rows)"
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("benchmark_speed", ROOT / "scripts" / "benchmark_speed.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.format_table(rows)
    except Exception:  # the table only: never lose the rows to a format change
        lines = ["| backbone | px | eps | variant | ms/it | peak MiB |", "|---|---|---|---|---|---|"]
        for r in rows:
            ms = f"{r['ms_per_it']:.1f}" if "ms_per_it" in r else f"error: {r.get('error', '?')}"
            lines.append(
                f"| {r.get('backbone')} | {r.get('image_size', '')} | {r.get('eps')} | {r.get('variant')} | {ms} | "
                f"{r.get('peak_mib', float('nan')):.0f} |"
            )
        return "\n".join(lines)


def choose_precision(requested: str, rows: list[dict]) -> tuple[str, str]:
    """``auto``: bf16 + channels-last when the speed table's U-Net step (eps 0.7) is >= 15 % faster than fp32."""
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ValueError(f"--precision must be auto or one of {sorted(PRECISIONS)}, got {requested!r}")
        return requested, "requested"
    ms = {
        r["variant"]: r["ms_per_it"]
        for r in rows
        if r.get("backbone") == "unet" and "ms_per_it" in r and abs(float(r.get("eps", 0)) - 0.7) < 1e-6
    }
    if "fp32" in ms and "bf16_cl" in ms:
        faster = ms["bf16_cl"] < 0.85 * ms["fp32"]
        why = f"speed table U-Net eps 0.7: fp32 {ms['fp32']:.1f} ms/it, bf16_cl {ms['bf16_cl']:.1f} ms/it"
        return ("bf16_cl" if faster else "fp32"), why
    return "fp32", "no fp32 / bf16_cl U-Net rows in the speed table"


# ---------------------------------------------------------------------------------------------- runs
def find_run_dirs(base: Path, variant: str) -> list[Path]:
    """Folders named ``variant`` under ``base`` (the benchmark's ``<protocol>/labeled<N>/<variant>`` layout)."""
    if not base.exists():
        return []
    return sorted(p for p in base.rglob(variant) if p.is_dir())


def read_record(results_dir: Path, variant: str) -> dict:
    for d in find_run_dirs(results_dir, variant):
        if (d / "run.json").exists():
            rec = json.loads((d / "run.json").read_text())
            rec["_dir"] = str(d)
            return rec
    return {}


def read_events(run_dir: Path) -> dict[str, list[tuple[int, float, float]]]:
    """TensorBoard scalars of one run: ``{tag: [(step, wall_time, value)]}`` (empty without tensorboard)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    out: dict[str, list[tuple[int, float, float]]] = {}
    for f in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((int(e.step), float(e.wall_time), float(e.value)) for e in acc.Scalars(tag))
    return {t: sorted(v) for t, v in out.items()}


def train_points(events: dict) -> list[tuple[int, float]]:
    """(iteration, wall time) of the iteration-level training log (the ``loss`` series, else ``lr``)."""
    for tag in ("loss", "train_loss", "lr", "train_lr"):
        if events.get(tag):
            return [(s, w) for s, w, _ in events[tag]]
    return []


def _step_at(points: list[tuple[int, float]], wall: float) -> float:
    """Iteration reached at ``wall`` (linear between logged points)."""
    for (s0, w0), (s1, w1) in zip(points, points[1:], strict=False):
        if w0 <= wall <= w1:
            return s0 + (s1 - s0) * (wall - w0) / max(w1 - w0, 1e-9)
    return float(points[0][0] if wall < points[0][1] else points[-1][0])


def calibrate(runs: dict[str, dict], parallel: bool) -> dict[str, dict]:
    """Per-variant costs from the calibration runs.

    ``runs``: ``{variant: {"points": [(it, wall)], "val_walls": [wall], "train_s": s, "eval_s": s, "iters": K}}``.
    Returns ``{variant: {"per_it_s", "val_s", "overhead_s", "eval_s", "how"}}``; in parallel mode the
    per-iteration time is measured over the window in which every run was iterating (so it is the time under
    sharing); when the windows do not overlap by 1 s, the run's own rate times the number of runs is used.
    """
    usable = {v: r for v, r in runs.items() if len(r.get("points", [])) >= 2}
    common = None
    if parallel and len(usable) > 1:
        lo = max(r["points"][0][1] for r in usable.values())
        hi = min(r["points"][-1][1] for r in usable.values())
        common = (lo, hi) if hi - lo >= 1.0 else None
    out = {}
    for v, r in runs.items():
        pts = r.get("points", [])
        iters = int(r.get("iters") or 0)
        train_s = float(r.get("train_s") or 0.0)
        if len(pts) >= 2:
            own = (pts[-1][1] - pts[0][1]) / max(pts[-1][0] - pts[0][0], 1)
            if not parallel or len(usable) == 1:
                per_it, how = own, "own window"
            elif common:
                done = _step_at(pts, common[1]) - _step_at(pts, common[0])
                per_it, how = (common[1] - common[0]) / max(done, 1e-9), f"shared window {common[1] - common[0]:.1f} s"
            else:
                per_it, how = own * len(usable), "own rate x runs (windows did not overlap)"
            last_train = pts[-1][1]
            after = [w for w in r.get("val_walls", []) if w >= last_train]
            val_s = (min(after) - last_train) if after else 0.0
        else:  # no event files: everything from the wall time of the process
            per_it, how, val_s = train_s / max(iters, 1), "whole training time / iterations (no events)", 0.0
        overhead = max(0.0, train_s - iters * per_it - val_s)
        out[v] = {
            "per_it_s": per_it,
            "val_s": val_s,
            "overhead_s": overhead,
            "eval_s": float(r.get("eval_s") or 0.0),
            "how": how,
        }
    # everything that is not an iteration or a validation: benchmark start-up, data loading, model building,
    # checkpoints, the evaluation process; from the wall time of the benchmark process(es)
    loops = {v: int(runs[v].get("iters") or 0) * c["per_it_s"] + c["val_s"] for v, c in out.items()}
    if parallel:
        for v, c in out.items():
            wall = float(runs[v].get("wall_s") or 0.0)
            c["fixed_s"] = max(wall - loops[v], c["overhead_s"] + c["eval_s"])
    elif out:  # one sequential benchmark process: its wall time less all the loops, shared out
        wall = max(float(r.get("wall_s") or 0.0) for r in runs.values() if r)
        rest = max(wall - sum(loops.values()), sum(c["overhead_s"] + c["eval_s"] for c in out.values()))
        for c in out.values():
            c["fixed_s"] = rest / len(out)
    return out


def plan_iterations(
    costs: dict[str, dict], seconds: float, val_every: int, parallel: bool, max_iters: int = 30000, min_iters: int = 2
) -> dict[str, Any]:
    """The common schedule that fits ``seconds``: ``{"iterations", "val_every", "predicted_s", ...}``.

    ``iterations`` is a multiple of ``val_every`` (``val_every`` shrinks, in steps of 10 or to the largest fit,
    when not even one interval fits); ``iterations`` 0 when not ``min_iters`` fit.
    """
    agg = max if parallel else sum
    per_it = agg(c["per_it_s"] for c in costs.values())
    val_s = agg(c["val_s"] for c in costs.values())
    fixed = agg(c.get("fixed_s", c["overhead_s"] + c["eval_s"]) for c in costs.values())
    room = seconds - fixed
    out = {"per_it_s": per_it, "val_s": val_s, "fixed_s": fixed, "room_s": room, "seconds": seconds}
    chunk = val_every * per_it + val_s
    chunks = int(room // chunk) if room > 0 and chunk > 0 else 0
    chunks = min(chunks, max(1, max_iters // val_every))
    if chunks >= 1:
        iters = chunks * val_every
    else:  # one validation at the end, as many iterations as fit before it
        fit = int((room - val_s) // per_it) if per_it > 0 and room > val_s else 0
        val_every = (fit // 10) * 10 if fit >= 20 else fit
        iters = val_every if val_every >= min_iters else 0
        val_every = max(val_every, 1)
    out.update(iterations=iters, val_every=val_every)
    out["predicted_s"] = fixed + iters * per_it + (iters // val_every) * val_s if iters else 0.0
    return out


# ---------------------------------------------------------------------------------------------- results
def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def eval_summary(csv_path: Path) -> dict[str, Any]:
    """Mean and per-class Dice / Jaccard / HD95 / ASD (voxels) of the bundle's ``metrics_summary.csv``."""
    if not csv_path.exists():
        return {}
    with open(csv_path, newline="") as f:
        rows = {r["class_name"]: r for r in csv.DictReader(f)}
    out: dict[str, Any] = {}
    for c in (*CLASSES, "mean"):
        r = rows.get(c, {})
        out[c] = {m: _num(r.get(f"{m}_mean")) for m in ("dice", "jaccard", "hd95_vox", "asd_vox")}
        out[c]["missed"] = int(_num(r.get("n_pred_empty")) or 0) if r.get("n_pred_empty") else 0
    for m in ("hd95_vox", "asd_vox"):  # mean over the classes where it is defined
        vals = [out[c][m] for c in CLASSES if not math.isnan(out[c][m])]
        out["mean"][m] = sum(vals) / len(vals) if vals else float("nan")
    return out


def curve(events: dict, val_every: int, tag: str = "val_mean_dice") -> list[tuple[int, float]]:
    """Validation ``tag`` against the iteration (the validation events are logged per epoch of ``val_every``)."""
    return [(s * int(val_every), v) for s, _, v in events.get(tag, [])]


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def _f1(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.1f}"


def results_table(runs: list[dict]) -> str:
    head = (
        "| variant | status | iterations | train s | eval s | Dice % | Jaccard % | HD95 vox | ASD vox | "
        "RV / Myo / LV Dice % | best val Dice % | missed |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        m = r.get("metrics") or {}
        mean = m.get("mean", {})
        per = " / ".join(_pct(m.get(c, {}).get("dice", float("nan"))) for c in CLASSES) if m else "n/a"
        best = max((v for _, v in r.get("curve", [])), default=float("nan"))
        missed = sum(m.get(c, {}).get("missed", 0) for c in CLASSES) if m else ""
        lines.append(
            f"| {r['variant']} | {r.get('status', '?')} | {r.get('iterations', '')} | {r.get('train_seconds', '')} | "
            f"{r.get('eval_seconds', '')} | {_pct(mean.get('dice', float('nan')))} | "
            f"{_pct(mean.get('jaccard', float('nan')))} | {_f1(mean.get('hd95_vox', float('nan')))} | "
            f"{_f1(mean.get('asd_vox', float('nan')))} | {per} | {_pct(best)} | {missed} |"
        )
    return "\n".join(lines)


def best_model(runs: list[dict], limit: int = MAX_FILE_BYTES) -> tuple[dict | None, str]:
    """The run whose teacher scored the best evaluated mean Dice (validation Dice when none was evaluated) and
    whose ``model.pt`` fits the file limit."""

    def score(r: dict) -> float:
        d = (r.get("metrics") or {}).get("mean", {}).get("dice", float("nan"))
        if math.isnan(d):
            d = max((v for _, v in r.get("curve", [])), default=float("nan")) - 1.0  # ranks below evaluated ones
        return -math.inf if math.isnan(d) else d

    notes = []
    for r in sorted(runs, key=score, reverse=True):
        pt = Path(r.get("model_pt", ""))
        if not r.get("model_pt") or not pt.exists():
            continue
        if pt.stat().st_size > limit:
            notes.append(f"{r['variant']}: model.pt is {pt.stat().st_size / 2**20:.1f} MiB, over the file limit")
            continue
        return r, "; ".join(notes)
    return None, "; ".join(notes) or "no run left a model.pt"


def check_out(out: Path) -> list[str]:
    """Problems with the output folder against the transfer limits (at most 8 files, each at most 16 MiB)."""
    files = [p for p in out.rglob("*") if p.is_file()]
    problems = [f"{len(files)} files (at most {MAX_FILES})"] if len(files) > MAX_FILES else []
    problems += [f"{p.name}: {p.stat().st_size / 2**20:.1f} MiB" for p in files if p.stat().st_size > MAX_FILE_BYTES]
    return problems


def pack(archive: Path, members: list[tuple[Path, str]], limit: int = MAX_FILE_BYTES) -> list[str]:
    """Write ``archive`` (tar.gz) from ``(path, name in archive)`` (folders recursively, ``.pt`` files never: the
    best ``model.pt`` travels beside it). Over ``limit``, TensorBoard event files and then the full training /
    evaluation logs are left out (run records, CSVs and log tails stay). Returns the paths left out."""

    def events(p: Path) -> bool:
        return "tfevents" in p.name

    def events_or_logs(p: Path) -> bool:
        return events(p) or (p.suffix == ".log" and p.name != "protocol.log")

    files = []
    for path, name in members:
        if path.is_dir():
            files += [(f, f"{name}/{f.relative_to(path)}") for f in sorted(path.rglob("*")) if f.is_file()]
        elif path.is_file():
            files.append((path, name))
    files = [(f, n) for f, n in files if f.suffix != ".pt"]
    dropped: list[str] = []
    for skip in (lambda p: False, events, events_or_logs):
        dropped = [str(f) for f, _ in files if skip(f)]
        with tarfile.open(archive, "w:gz") as tar:
            for f, n in files:
                if not skip(f):
                    tar.add(f, arcname=n)
        if archive.stat().st_size <= limit:
            break
    return dropped


# ---------------------------------------------------------------------------------------------- the protocol
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (at most 8 files of at most 16 MiB are written there)")
    p.add_argument("--budget", type=float, default=float(_env("BUDGET_S", "480")), help="wall seconds in all")
    p.add_argument("--t0", type=float, default=float(_env("PROTOCOL_T0", str(time.time()))), help="budget start")
    p.add_argument("--device", default=_env("DEVICE", "cuda"), help="cuda or cpu")
    p.add_argument("--work", default=_env("WORK", "/tmp/vqseg_gpu_protocol"), help="scratch folder (emptied)")
    p.add_argument("--variants", default=_env("VARIANTS", ",".join(HEADLINE)), help="comma list of variants")
    p.add_argument("--labeled", type=int, default=int(_env("LABELED", "3")), help="labeled patients (3 or 7)")
    p.add_argument("--seed", type=int, default=int(_env("SEED", "0")))
    p.add_argument("--protocol", default=_env("PROTOCOL", "gpu"), help="benchmark_acdc.py protocol")
    p.add_argument("--dataset_archive", default=_env("DATASET_ARCHIVE", ""), help="ACDC tar archive")
    p.add_argument("--dataset_dir", default=_env("DATASET_DIR", ""), help="ACDC folder or 'demo' (no archive)")
    p.add_argument("--val_every", type=int, default=int(_env("VAL_EVERY", "200")))
    p.add_argument("--max_iters", type=int, default=int(_env("MAX_ITERS", "30000")))
    p.add_argument("--cal_iters", type=int, default=int(_env("CAL_ITERS", "100")), help="calibration iterations")
    p.add_argument("--cal_s", type=float, default=float(_env("CAL_S", "150")), help="calibration time limit")
    p.add_argument("--log_every", type=int, default=int(_env("LOG_EVERY", "20")), help="training log interval")
    p.add_argument("--parallel", type=int, default=int(_env("PARALLEL", "1")), help="1: variants side by side")
    p.add_argument("--threads", type=int, default=int(_env("THREADS", "0")), help="CPU threads per run (0: auto)")
    p.add_argument("--precision", default=_env("PRECISION", "auto"), help=f"auto or one of {sorted(PRECISIONS)}")
    p.add_argument("--extra", default=_env("TRAIN_EXTRA", ""), help="config overrides of every run (literal)")
    p.add_argument("--tests", default=_env("TESTS", "1"), help="0: skip the CUDA / speed-path tests")
    p.add_argument("--tests_s", type=float, default=float(_env("TESTS_S", "75")))
    p.add_argument("--speed_s", type=float, default=float(_env("SPEED_S", "80")), help="main speed table limit")
    p.add_argument("--compile_s", type=float, default=float(_env("COMPILE_S", "45")), help="compile row limit")
    p.add_argument("--speed_backbones", default=_env("BACKBONES", "unet,vit"))
    p.add_argument("--speed_variants", default=_env("SPEED_VARIANTS", "fp32,bf16_cl"))
    p.add_argument("--speed_eps", default=_env("SPEED_EPS", "0.1,0.7"))
    p.add_argument("--speed_iters", type=int, default=int(_env("SPEED_ITERS", "20")))
    p.add_argument("--speed_warmup", type=int, default=int(_env("SPEED_WARMUP", "5")))
    p.add_argument("--speed_set", default=_env("BENCH_SET", ""), help="benchmark_speed --set JSON")
    p.add_argument("--pack_s", type=float, default=float(_env("PACK_S", "15")), help="seconds kept for packing")
    p.add_argument("--margin_s", type=float, default=float(_env("MARGIN_S", "0")), help="extra safety (0: auto)")
    return p.parse_args(argv)


def _dataset_args(args: argparse.Namespace) -> tuple[list[str], str]:
    if args.dataset_archive:
        return ["--dataset_archive", str(Path(args.dataset_archive).resolve())], args.dataset_archive
    if args.dataset_dir:
        return ["--dataset_dir", args.dataset_dir], args.dataset_dir
    return [], "the benchmark's default dataset_dir"


def bench_cmd(
    args: argparse.Namespace, variants: list[str], iters: int, val_every: int, extra: dict, results: Path, timeout
) -> list[str]:
    """One ``scripts/benchmark_acdc.py run`` call (its CLI, flags only)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_acdc.py"), "run", "--protocol", args.protocol]
    cmd += ["--iterations", str(int(iters)), "--val_every", str(int(val_every))]
    cmd += ["--variants", repr(list(variants)), "--labeled", repr([int(args.labeled)]), "--seed", str(args.seed)]
    cmd += _dataset_args(args)[0]
    cmd += ["--work_dir", str(Path(args.work) / "bench"), "--results_dir", str(results)]
    cmd += ["--docs_file", str(Path(args.work) / "results.md"), "--docs_dir", str(Path(args.work) / "docs")]
    cmd += ["--report", "False", "--force", "True", "--extra", repr(extra)]
    if timeout is not None:
        cmd += ["--timeout", f"{max(1.0, float(timeout)):.0f}"]
    return cmd


def run_variants(
    args, variants, iters, val_every, extra, results: Path, logs: Path, limit: float, sub_timeout, env, log
) -> dict[str, tuple[int, float]]:
    """All variants, side by side (one benchmark process each) or in one sequential benchmark process."""
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[int, float]] = {}
    if not args.parallel or len(variants) == 1:
        cmd = bench_cmd(args, variants, iters, val_every, extra, results, sub_timeout)
        code, secs = run_limited(cmd, logs / "benchmark.log", limit, env)
        return {v: (code, secs) for v in variants}
    start = time.time()
    procs = {}
    for v in variants:
        cmd = bench_cmd(args, [v], iters, val_every, extra, results, sub_timeout)
        f = open(logs / f"benchmark_{v}.log", "w")  # noqa: SIM115 - closed below
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        procs[v] = (
            subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True),
            f,
        )
    for v, (proc, f) in procs.items():
        try:
            code = proc.wait(timeout=max(1.0, limit - (time.time() - start)))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            f.write(f"\n[gpu_protocol] killed at the {limit:.0f} s limit\n")
            code = 124
        f.close()
        out[v] = (code, time.time() - start)
        log(f"  {v}: benchmark exit {code} after {out[v][1]:.0f} s")
    return out


def collect(args, variants: list[str], results: Path, iters: int, val_every: int) -> list[dict]:
    runs = []
    for v in variants:
        rec = read_record(results, v)
        run_dirs = [d for d in find_run_dirs(Path(args.work) / "bench", v) if (d / "tensorboard").exists()]
        run_dir = run_dirs[0] if run_dirs else None
        events = read_events(run_dir) if run_dir else {}
        res_dir = Path(rec["_dir"]) if rec.get("_dir") else None
        metrics = eval_summary(res_dir / "metrics_summary.csv") if res_dir else {}
        if not metrics and run_dir is not None:
            metrics = eval_summary(run_dir / "eval" / "metrics_summary.csv")
        runs.append(
            {
                "variant": v,
                "status": rec.get("status", "no record"),
                "iterations": iters,
                "train_seconds": rec.get("train_seconds"),
                "eval_seconds": rec.get("eval_seconds"),
                "metrics": metrics,
                "val_every": val_every,
                "curve": curve(events, val_every),
                "class_curves": {c: curve(events, val_every, f"val_dice_{c}") for c in CLASSES},
                "events": events,
                "run_dir": str(run_dir) if run_dir else "",
                "model_pt": str(run_dir / "models" / "model.pt") if run_dir else "",
                "eval_command": rec.get("eval_command", ""),
                "results_dir": str(res_dir) if res_dir else "",
            }
        )
    return runs


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    clock = Clock(args.t0, args.budget)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve()
    args.work = str(work)
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    log = Log(work / "logs" / "protocol.log", clock)
    variants = names(args.variants)
    cuda = args.device.startswith("cuda")
    cores = os.cpu_count() or 1
    n_par = len(variants) if args.parallel else 1
    if args.threads:
        threads = args.threads
    else:  # on the GPU machine the cores are shared by the side-by-side runs; on a CPU one thread each
        threads = max(1, cores // max(1, n_par) - 1) if cuda else 1
    margin = args.margin_s or max(10.0, 0.04 * args.budget)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    report: dict[str, Any] = {
        "budget_s": args.budget,
        "device": args.device,
        "variants": variants,
        "labeled": args.labeled,
        "seed": args.seed,
        "protocol": args.protocol,
        "dataset": _dataset_args(args)[1],
        "threads_per_run": threads,
        "parallel": bool(args.parallel),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    log(f"budget {args.budget:.0f} s ({clock.left():.0f} s left), device {args.device}, variants {variants}")

    # 1. environment ------------------------------------------------------------------------------------
    env_txt = work / "logs" / "env.txt"
    probe = (
        "import os, platform, torch; print('python', platform.python_version(), 'torch', torch.__version__, "
        "'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'cores', os.cpu_count()); "
        "print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')\n"
        "for m in ('monai', 'ignite', 'nibabel', 'fire', 'timm', 'h5py', 'skimage', 'tensorboard', 'numpy'):\n"
        "    try: print(m, __import__(m).__version__)\n"
        "    except Exception as e: print(m, 'MISSING', repr(e)[:80])"
    )
    with open(env_txt, "w") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S %Z") + "\n")
    if shutil.which("nvidia-smi"):
        q = "--query-gpu=name,memory.total,driver_version,clocks.max.sm"
        run_limited(["nvidia-smi", q, "--format=csv"], env_txt, 20, env)
    run_limited([sys.executable, "-c", probe], env_txt, 60, env, label="python: versions")
    run_limited(["git", "log", "-1", "--format=commit %h %s"], env_txt, 10, env)
    report["environment"] = env_txt.read_text(errors="replace")
    log("environment:\n" + report["environment"])
    if cuda and "available True" not in report["environment"]:  # never train the 256 px protocol on a CPU by mistake
        report["error"] = f"--device {args.device} asked for, but torch sees no CUDA device (DEVICE=cpu for a CPU run)"
        log(report["error"])
        return finish(args, out, work, report, [], [], log, clock)

    # 2. tests ------------------------------------------------------------------------------------------
    tests_log = work / "logs" / "tests.log"
    if args.tests not in ("0", "false", "False", ""):
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/speed"]
        cmd += ["tests/networks/test_net_qpm.py", "tests/networks/test_net_quantizer.py"]
        cmd += ["-m", "not slow"]
        code, secs = run_limited(cmd, tests_log, min(args.tests_s, max(0.0, clock.left() * 0.2)), env)
        report["tests"] = {"exit": code, "seconds": round(secs, 1), "tail": _tail(tests_log, 3)}
        log(f"tests: exit {code} in {secs:.0f} s: {_tail(tests_log, 1)}")
    else:
        report["tests"] = {"exit": None, "tail": "skipped (TESTS=0)"}

    # 3. dataset ----------------------------------------------------------------------------------------
    dataset_dir = args.dataset_dir or "demo"
    if args.dataset_archive:
        dry = bench_cmd(args, variants, 2, 2, {}, work / "dry_results", None) + ["--dry_run", "True"]
        code, secs = run_limited(dry, work / "logs" / "unpack.log", max(1.0, clock.left() - 60), env)
        found = sorted((work / "bench").rglob("train_slices.list"), key=lambda p: len(p.parts))
        log(f"dataset: unpack + dry run exit {code} in {secs:.0f} s; {found[0].parent if found else 'NOT FOUND'}")
        if code != 0 or not found:
            report["error"] = f"dataset archive could not be unpacked: {_tail(work / 'logs' / 'unpack.log', 5)}"
            return finish(args, out, work, report, [], [], log, clock)
        dataset_dir = str(found[0].parent)

    # 4. speed table ------------------------------------------------------------------------------------
    speed_dir = work / "speed"
    speed_dir.mkdir()
    base = [sys.executable, str(ROOT / "scripts" / "benchmark_speed.py"), "--device", args.device, "--inprocess"]
    base += ["--warmup", str(args.speed_warmup), "--iterations", str(args.speed_iters), "--data", "batched"]
    base += ["--dataset_dir", dataset_dir, "--data_cache_dir", str(work / "demo_cache")]
    if not cuda:
        base += ["--threads", "1"]
    if args.speed_set:
        base += ["--set", args.speed_set]
    speed_cmds = [
        (
            "main",
            base + ["--backbone", args.speed_backbones, "--eps", args.speed_eps, "--variants", args.speed_variants],
            args.speed_s,
        )
    ]
    if cuda and args.compile_s > 0:
        speed_cmds.append(
            ("compile", base + ["--backbone", "unet", "--eps", "0.7", "--variants", "bf16_cl_compile"], args.compile_s)
        )
    rows: list[dict] = []
    for name, cmd, limit in speed_cmds:
        cmd = cmd + ["--json", str(speed_dir / f"speed_{name}.json")]
        lim = min(limit, max(0.0, clock.left() * 0.3))
        code, secs = run_limited(cmd, speed_dir / f"speed_{name}.log", lim, env)
        got = speed_rows(speed_dir / f"speed_{name}.log")
        if code == 124:  # the configuration that was running when the limit came
            cut = {"backbone": f"{name} step", "eps": "", "variant": "remaining configurations", "data": ""}
            got.append(dict(cut, error=f"not measured: the step was cut at its {lim:.0f} s limit"))
        rows += got
        log(f"speed {name}: exit {code} in {secs:.0f} s, {len(got)} rows")
    report["speed_rows"] = rows
    report["speed_table"] = speed_table(rows)
    (speed_dir / "speed.md").write_text(report["speed_table"] + "\n")
    log("speed table:\n" + report["speed_table"])
    precision, why = choose_precision(args.precision, rows)
    extra = {"log_every": args.log_every, "num_threads": threads, **PRECISIONS[precision]}
    if not cuda:
        extra["device"] = f"$torch.device({args.device!r})"
    extra.update(literal(args.extra) or {})
    report["precision"] = {"chosen": precision, "why": why}
    report["extra"] = extra
    log(f"training precision {precision} ({why}); overrides {extra}")

    # 5. calibration ------------------------------------------------------------------------------------
    cal_res = work / "cal_results"
    attempts = [extra]
    if precision != "fp32":  # a precision that fails every run is retried once in fp32, if time allows
        attempts.append({k: v for k, v in extra.items() if k not in PRECISIONS[precision]})
    for attempt, run_extra in enumerate(attempts):
        cal_extra = dict(run_extra, log_every=max(1, min(args.log_every, args.cal_iters // 6 or 1)))
        cal_limit = max(1.0, min(args.cal_s, clock.left() - args.pack_s - margin))
        log(f"calibration: {args.cal_iters} iterations each, limit {cal_limit:.0f} s")
        codes = run_variants(
            args,
            variants,
            args.cal_iters,
            args.cal_iters,
            cal_extra,
            cal_res,
            work / "logs" / f"cal{attempt or ''}",
            cal_limit,
            cal_limit,
            env,
            log,
        )
        cal_runs = collect(args, variants, cal_res, args.cal_iters, args.cal_iters)
        measured = {}
        for r in cal_runs:
            ev = r.pop("events")
            if r["status"] == "ok":
                measured[r["variant"]] = {
                    "points": train_points(ev),
                    "val_walls": [w for _, w, _ in ev.get("val_mean_dice", [])],
                    "train_s": r["train_seconds"],
                    "eval_s": r["eval_seconds"],
                    "iters": args.cal_iters,
                    "wall_s": codes.get(r["variant"], (0, 0.0))[1],
                }
            else:
                log(f"calibration of {r['variant']} failed ({r['status']}, exit {codes.get(r['variant'])}): dropped")
        if measured or attempt + 1 == len(attempts) or clock.left() < 0.4 * args.budget:
            break
        log(f"every calibration run failed under {precision}: retrying in fp32")
        extra, precision = attempts[attempt + 1], "fp32"
        report["precision"] = {"chosen": precision, "why": "fp32 after every run failed in the chosen precision"}
        report["extra"] = extra
    costs = calibrate(measured, bool(args.parallel))
    report["calibration"] = {"runs": cal_runs, "costs": costs}
    for v, c in costs.items():
        log(
            f"  {v}: {1000 * c['per_it_s']:.1f} ms/it ({c['how']}), validation {c['val_s']:.1f} s, "
            f"training start-up {c['overhead_s']:.1f} s, evaluation {c['eval_s']:.1f} s, fixed in all {c['fixed_s']:.1f} s"
        )
    # keep the calibration run folders (logs, events, model.pt) out of the real runs' way
    (work / "cal_work").mkdir()
    for child in sorted((work / "bench").iterdir()) if (work / "bench").exists() else []:
        if child.name != "dataset":
            shutil.move(str(child), str(work / "cal_work" / child.name))
    main_variants = [v for v in variants if v in costs]

    # 6. plan -------------------------------------------------------------------------------------------
    plan: dict[str, Any] = {"iterations": 0}
    if main_variants:
        seconds = clock.left() - args.pack_s - margin
        plan = plan_iterations(
            {v: costs[v] for v in main_variants}, seconds, args.val_every, bool(args.parallel), args.max_iters
        )
    report["plan"] = plan
    log(f"plan: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in plan.items()})}")

    # 7. real runs --------------------------------------------------------------------------------------
    runs: list[dict] = []
    if plan["iterations"] > 0:
        main_res = work / "results"
        limit = clock.left() - args.pack_s
        eval_max = max(costs[v]["eval_s"] for v in main_variants)
        sub_timeout = max(1.0, limit - eval_max - 5)
        log(f"training {main_variants}: {plan['iterations']} iterations, validation every {plan['val_every']}")
        codes = run_variants(
            args,
            main_variants,
            plan["iterations"],
            plan["val_every"],
            extra,
            main_res,
            work / "logs" / "main",
            limit,
            sub_timeout,
            env,
            log,
        )
        runs = collect(args, main_variants, main_res, plan["iterations"], plan["val_every"])
        for r in runs:  # training cut by the budget but a teacher saved: evaluate it if time allows
            if r["status"] != "ok" and r["model_pt"] and Path(r["model_pt"]).is_file() and r["eval_command"]:
                left = clock.left() - args.pack_s
                if left > costs[r["variant"]]["eval_s"] + 5:
                    code, secs = run_limited(shlex.split(r["eval_command"]), Path(r["run_dir"]) / "eval.log", left, env)
                    r["metrics"] = eval_summary(Path(r["run_dir"]) / "eval" / "metrics_summary.csv")
                    r["status"] += f", evaluated afterwards (exit {code})"
                    r["eval_seconds"] = round(secs, 1)
    else:
        log("no time for the real runs: the calibration runs are reported instead")
        runs = cal_runs
        for r in runs:
            r["run_dir"] = r["run_dir"].replace(str(work / "bench"), str(work / "cal_work"))
            r["model_pt"] = r["model_pt"].replace(str(work / "bench"), str(work / "cal_work"))
    for r in runs:
        r.pop("events", None)
    return finish(args, out, work, report, runs, rows, log, clock)


def finish(args, out: Path, work: Path, report: dict, runs: list[dict], rows: list[dict], log, clock) -> int:
    """Write summary.md, results.json, protocol.tar.gz, model.pt / model.json, protocol.log into ``out``."""
    report["runs"] = runs
    best, note = best_model(runs)
    report["best_model"] = {"variant": best["variant"] if best else None, "note": note}
    if best:
        shutil.copyfile(best["model_pt"], out / "model.pt")
        settings = Path(best["model_pt"]).with_suffix(".json")
        if settings.exists():
            shutil.copyfile(settings, out / "model.json")
    lines = [
        "# GPU protocol results",
        "",
        f"Command: `{report['command']}`; budget {args.budget:.0f} s, device {args.device}, "
        f"{report['threads_per_run']} CPU threads per run, variants side by side: {report['parallel']}.",
        f"Dataset: {report['dataset']}; labeled patients {args.labeled}; seed {args.seed}; protocol {args.protocol}.",
        "",
        "## Environment",
        "",
        "```",
        report.get("environment", "").strip(),
        "```",
        "",
        "## Tests",
        "",
        "```",
        str(report.get("tests", {}).get("tail", "")),
        "```",
        "",
        "## Speed table",
        "",
        report.get("speed_table", "(not run)"),
        "",
        f"Training precision: {report.get('precision', {}).get('chosen')} ({report.get('precision', {}).get('why')}).",
        "",
        "## Calibration and plan",
        "",
        "| variant | ms/it (measured how) | validation s | training start-up s | evaluation s | fixed s in all |",
        "|---|---|---|---|---|---|",
    ]
    for v, c in report.get("calibration", {}).get("costs", {}).items():
        lines.append(
            f"| {v} | {1000 * c['per_it_s']:.1f} ({c['how']}) | {c['val_s']:.1f} | {c['overhead_s']:.1f} | "
            f"{c['eval_s']:.1f} | {c.get('fixed_s', float('nan')):.1f} |"
        )
    plan = report.get("plan", {})
    if plan:
        lines += [
            "",
            "Plan: " + ", ".join(f"{k} {round(v, 2) if isinstance(v, float) else v}" for k, v in plan.items()),
        ]
    lines += [
        "",
        "## Results (EMA / shipped teacher, evaluated on the validation volumes by configs/evaluate.yaml)",
        "",
        results_table(runs) if runs else "(no runs)",
        "",
        "Learning curves (validation mean Dice % at iteration):",
        "",
    ]
    for r in runs:
        pts = ", ".join(f"{s}: {100 * v:.1f}" for s, v in r.get("curve", []))
        lines.append(f"* {r['variant']}: {pts or 'n/a'}")
    if report.get("error"):
        lines += ["", f"**Error:** {report['error']}"]
    lines += ["", f"Best model: {report['best_model']}", f"Finished at {clock.elapsed():.0f} s of {args.budget:.0f} s."]
    summary = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(summary)
    (work / "logs" / "summary.md").write_text(summary)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    with open(work / "logs" / "curves.csv", "w", newline="") as f:  # every learning curve in one table
        w = csv.writer(f)
        w.writerow(["variant", "iteration", "val_mean_dice", *(f"val_dice_{c}" for c in CLASSES)])
        for r in runs:
            per_class = {c: dict(r.get("class_curves", {}).get(c, [])) for c in CLASSES}
            for it, v in r.get("curve", []):
                w.writerow(
                    [r["variant"], it, f"{v:.6f}", *(f"{per_class[c].get(it, float('nan')):.6f}" for c in CLASSES)]
                )
    members = [
        (work / "logs", "logs"),
        (work / "speed", "speed"),
        (work / "cal_results", "calibration/results"),
        (work / "cal_work", "calibration/runs"),
        (work / "results", "results"),
    ]
    if (work / "bench").exists():  # the real runs' folders (not the unpacked dataset)
        members += [(d, f"runs/{d.name}") for d in sorted((work / "bench").iterdir()) if d.name != "dataset"]
    dropped = pack(out / "protocol.tar.gz", members)
    if dropped:
        log(f"archive over {MAX_FILE_BYTES / 2**20:.0f} MiB: left out {len(dropped)} files (events / full logs)")
    log(f"done in {clock.elapsed():.0f} s; best model: {report['best_model']}")
    shutil.copyfile(work / "logs" / "protocol.log", out / "protocol.log")
    problems = check_out(out)
    for p in problems:
        print(f"output folder over the transfer limits: {p}", flush=True)
    print(summary, flush=True)
    return 1 if problems or not runs else 0


if __name__ == "__main__":
    sys.exit(main())
