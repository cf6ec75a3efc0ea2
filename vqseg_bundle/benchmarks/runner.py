"""Running the benchmark: each (variant, labeled count) trained and evaluated in its own ``monai.bundle``
subprocess, its artefacts collected under ``<results_dir>/acdc_<protocol>/labeled<N>/<run>/``."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vqseg_bundle.benchmarks.archive import unpack_dataset
from vqseg_bundle.benchmarks.commands import build_commands
from vqseg_bundle.benchmarks.curves import read_tensorboard, write_curves
from vqseg_bundle.benchmarks.environment import environment, machine_label
from vqseg_bundle.benchmarks.paths import REPO
from vqseg_bundle.benchmarks.protocols import PROTOCOLS, Protocol
from vqseg_bundle.benchmarks.variants import VARIANTS, run_name, variant_overrides

#: bytes of a log kept in the results folder (``train_log_tail.txt``)
LOG_TAIL_BYTES = 60_000


def run_benchmark(
    protocol: str,
    labeled: Sequence[int],
    variants: Sequence[str],
    dataset_dir: str,
    dataset_archive: str | None,
    work_dir: Path,
    results_dir: Path,
    seed: int,
    extra: dict | None,
    iterations: int | None,
    val_every: int | None,
    force: bool,
    dry_run: bool,
    timeout: float | None,
    protocols: Mapping[str, Protocol] | None = None,
    dataset: str = "acdc",
    test_split: str | None = None,
) -> list[dict[str, Any]]:
    """Check the arguments, then train and evaluate ``variants`` x ``labeled`` under ``protocol`` (the meaning of
    each argument: ``Benchmark.run`` of ``scripts/benchmark_acdc.py``).

    ``protocols`` (default: the ACDC ones), ``dataset`` (the results folder prefix, ``<dataset>_<protocol>``) and
    ``test_split`` (a ``dataset.json`` list scored once more after the validation evaluation, e.g. ``"test"``:
    ``test_metrics_*.csv``) let another data set use the same runner (``scripts/benchmark_covid.py``).

    Returns:
        One ``run.json`` record per run.

    Raises:
        ValueError: an unknown protocol or variant, a bad schedule, a missing dataset folder, ``extra`` not a dict.
    """
    protocols = PROTOCOLS if protocols is None else protocols
    if protocol not in protocols:
        raise ValueError(f"--protocol must be one of {sorted(protocols)}, got {protocol!r}")
    proto = protocols[protocol]
    if iterations is not None or val_every is not None:
        proto = replace(
            proto, iterations=int(iterations or proto.iterations), val_every=int(val_every or proto.val_every)
        )
    proto.schedule_overrides()  # validates the schedule
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"--variants: unknown variant {name!r}; expected one of {sorted(VARIANTS)}")
    if dataset_archive:
        dataset_dir = str(unpack_dataset(dataset_archive, work_dir / "dataset"))
    if dataset_dir not in ("demo", "") and not Path(dataset_dir).exists():
        raise ValueError(f"--dataset_dir {dataset_dir!r} does not exist (give the ACDC folder or 'demo')")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"--extra must be a dict of config overrides, got {extra!r}")
    env = environment()
    print("benchmark command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    print("environment:", json.dumps(env), flush=True)
    print("machine:", machine_label(env), flush=True)
    records = []
    for n in labeled:
        for name in variants:
            records.append(
                run_one(
                    proto,
                    name,
                    n,
                    dataset_dir,
                    work_dir,
                    results_dir,
                    seed,
                    extra,
                    env,
                    force,
                    dry_run,
                    timeout,
                    dataset,
                    test_split,
                )
            )
    print("\nstatus:", flush=True)
    for r in records:
        print(
            f"  labeled {r['labeled']} {r['variant']}: {r['status']} "
            f"(train {r.get('train_seconds', '-')} s, eval {r.get('eval_seconds', '-')} s)",
            flush=True,
        )
    return records


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
    dataset: str = "acdc",
    test_split: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate and collect one (variant, labeled) run; returns its ``run.json`` record. With ``test_split``
    the model is scored once more on that ``dataset.json`` list (``test_metrics_per_case.csv``,
    ``test_metrics_summary.csv``; its command ``test_command``), after model selection on validation."""
    name = run_name(variant, seed)
    prefix = "" if dataset == "acdc" else f"{dataset}_"
    run_dir = work_dir / f"{prefix}{protocol.name}" / f"labeled{labeled}" / name
    res_dir = results_dir / f"{dataset}_{protocol.name}" / f"labeled{labeled}" / name
    train_cmd, eval_cmd = build_commands(protocol, variant, labeled, dataset_dir, run_dir, seed, extra)
    test_cmd = None
    if test_split:
        test_cmd = eval_cmd + ["--validation_split", test_split, "--eval_output_dir", str(run_dir / "eval_test")]
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
    if test_cmd is not None:
        record["test_split"], record["test_command"] = test_split, shlex.join(test_cmd)
    print(f"\n=== {protocol.name} / labeled {labeled} / {variant}", flush=True)
    print("train:", record["train_command"], flush=True)
    print("eval: ", record["eval_command"], flush=True)
    if test_cmd is not None:
        print("test: ", record["test_command"], flush=True)
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
        return _failed(record, "train_failed", run_dir / "train.log", res_dir)

    code, seconds = _run_logged(eval_cmd, run_dir / "eval.log", timeout, protocol.threads)
    record.update(eval_seconds=round(seconds, 1), eval_returncode=code)
    (res_dir / "eval_log_tail.txt").write_text(_tail(run_dir / "eval.log", 8000))
    print(f"evaluation: exit {code}, {seconds:.0f} s", flush=True)
    eval_dir = run_dir / "eval"
    if code != 0 or not (eval_dir / "metrics_summary.csv").exists():
        return _failed(record, "eval_failed", run_dir / "eval.log", res_dir)
    for name in ("metrics_per_case.csv", "metrics_summary.csv"):
        shutil.copyfile(eval_dir / name, res_dir / name)
    if test_cmd is not None:
        code, seconds = _run_logged(test_cmd, run_dir / "test.log", timeout, protocol.threads)
        record.update(test_seconds=round(seconds, 1), test_returncode=code)
        (res_dir / "test_log_tail.txt").write_text(_tail(run_dir / "test.log", 8000))
        print(f"test evaluation: exit {code}, {seconds:.0f} s", flush=True)
        if code != 0 or not (run_dir / "eval_test" / "metrics_summary.csv").exists():
            return _failed(record, "test_failed", run_dir / "test.log", res_dir)
        for name in ("metrics_per_case.csv", "metrics_summary.csv"):
            shutil.copyfile(run_dir / "eval_test" / name, res_dir / f"test_{name}")
    series = read_tensorboard(run_dir / "tensorboard")
    write_curves(series, protocol.val_every, res_dir)
    record["status"] = "ok"
    (res_dir / "run.json").write_text(json.dumps(record, indent=2))
    return record


def _failed(record: dict[str, Any], status: str, log: Path, res_dir: Path) -> dict[str, Any]:
    """Record a failed step (``status``, the end of its ``log``) in ``run.json`` and print that end."""
    record["status"] = status
    record["error_tail"] = _tail(log, 3000)
    (res_dir / "run.json").write_text(json.dumps(record, indent=2))
    print(record["error_tail"], flush=True)
    return record


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
