"""ACDC benchmark: VQ-Seg against its baselines, trained and evaluated with the bundle's own configs.

Each (variant, labeled-patient count) is one ``python -m monai.bundle run training`` subprocess on
``configs/train.yaml`` (so every run is isolated and its exact command line is logged), followed by
one evaluation subprocess (``configs/train.yaml`` + ``configs/evaluate.yaml``) of the best EMA-teacher
``model.pt`` on the validation volumes. The script then collects Dice / Jaccard / HD95 / ASD per class,
the learning curves (validation Dice against iteration, read from the TensorBoard event files the
trainer writes) and training diagnostics (pseudo-label mask ratio, codebook usage, loss terms), and
rewrites the section of ``docs/results.md`` between ``<!-- acdc-benchmark:start -->`` and
``<!-- acdc-benchmark:end -->``.

The protocols (training schedules) are ``configs/benchmarks/acdc_protocols.yaml``, the variants (config
overrides) ``configs/benchmarks/acdc_variants.yaml``; the runner and the report are ``vqseg_bundle.benchmarks``.
This file is its command line.

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

import json
import sys
from pathlib import Path
from typing import Any

import fire

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a plain checkout

from vqseg_bundle.benchmarks.commands import as_flag, as_list  # noqa: E402
from vqseg_bundle.benchmarks.environment import environment  # noqa: E402
from vqseg_bundle.benchmarks.paths import DEFAULT_DATASET_DIR, resolve  # noqa: E402
from vqseg_bundle.benchmarks.protocols import PROTOCOLS  # noqa: E402
from vqseg_bundle.benchmarks.report import write_report  # noqa: E402
from vqseg_bundle.benchmarks.runner import run_benchmark  # noqa: E402
from vqseg_bundle.benchmarks.variants import DEFAULT_VARIANTS, VARIANTS, variant_overrides  # noqa: E402

RESULTS_DIR = "results"
DOCS_FILE = "docs/results.md"
DOCS_DIR = "docs"
#: the protocol under which ``variants`` shows each variant's overrides
SHOWN_PROTOCOL = "cpu"


class Benchmark:
    """ACDC benchmark of VQ-Seg and its baselines (see the module docstring)."""

    def variants(self) -> None:
        """Print every variant, its description and its config overrides (under the cpu protocol)."""
        for name in VARIANTS:
            print(f"{name}: {VARIANTS[name]['description']}")
            print(f"    {json.dumps(variant_overrides(name, PROTOCOLS[SHOWN_PROTOCOL]))}")
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
        results_dir: str = RESULTS_DIR,
        docs_file: str = DOCS_FILE,
        docs_dir: str = DOCS_DIR,
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
            protocol: a protocol of ``configs/benchmarks/acdc_protocols.yaml`` (``cpu``, ``cpu_peer``, ``gpu``,
                ``gpu_vit``, ``smoke``, ...).
            labeled: labeled-patient counts (3 and/or 7: the dataset's ``labeled_<N>_cases.list``).
            variants: variant names of ``configs/benchmarks/acdc_variants.yaml`` (``variants`` lists them).
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
        force, dry_run, report = as_flag(force, "force"), as_flag(dry_run, "dry_run"), as_flag(report, "report")
        records = run_benchmark(
            protocol=protocol,
            labeled=[int(n) for n in as_list(labeled, "labeled")],
            variants=[str(v) for v in as_list(variants, "variants")],
            dataset_dir=dataset_dir,
            dataset_archive=dataset_archive,
            work_dir=resolve(work_dir),
            results_dir=resolve(results_dir),
            seed=seed,
            extra=extra,
            iterations=iterations,
            val_every=val_every,
            force=force,
            dry_run=dry_run,
            timeout=timeout,
        )
        if report and not dry_run:
            self.report(results_dir=results_dir, docs_file=docs_file, docs_dir=docs_dir)
        self.records = records  # for callers that use the class directly (tests); fire prints nothing

    def report(self, results_dir: str = RESULTS_DIR, docs_file: str = DOCS_FILE, docs_dir: str = DOCS_DIR) -> None:
        """Rebuild the ACDC section of ``docs_file`` (and the curve PNGs) from ``results_dir``."""
        write_report(resolve(results_dir), resolve(docs_dir), resolve(docs_file))
        print(f"wrote the ACDC section of {resolve(docs_file)}", flush=True)


if __name__ == "__main__":
    fire.Fire(Benchmark)
