"""COVID-SemiSeg benchmark (chest CT lung infection, 2D slices): labeled-only, UniMatch and VQ-Seg, at several seeds,
trained, selected on validation and scored on the 48 test slices with the bundle's own configs.

The same machinery as ``scripts/benchmark_acdc.py`` (``vqseg_bundle.benchmarks``): each (variant, seed) is one
``python -m monai.bundle run training`` subprocess on ``configs/train.yaml``, one evaluation of its ``model.pt`` on
the validation slices (``configs/evaluate.yaml``), and one on the test slices (the same command with
``--validation_split test``). The protocols are ``configs/benchmarks/covid_protocols.yaml``, the variants those of
``configs/benchmarks/acdc_variants.yaml``; the data set ``dataset.json`` is written by
``scripts/prepare_covid_semiseg.py`` on first use. The report (``vqseg_bundle/benchmarks/covid_report.py``) rewrites
the section of ``docs/results.md`` between ``<!-- covid-benchmark:start -->`` and ``<!-- covid-benchmark:end -->``.

Examples (from the bundle root):
    python scripts/benchmark_covid.py run                                  # 3 variants x seeds 0, 1, 2, then the report
    python scripts/benchmark_covid.py run --variants "['unimatch']" --seeds "[1]"
    python scripts/benchmark_covid.py run --dry_run true                   # print the commands only
    python scripts/benchmark_covid.py report                               # rebuild the docs section from results/

Layout: as the ACDC benchmark, under ``<work_dir>/covid_<protocol>/labeled40/<run>/`` (checkpoints, logs) and
``<results_dir>/covid_<protocol>/labeled40/<run>/`` (``run.json``, validation and ``test_metrics_*.csv``, curves).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import fire

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a plain checkout

from vqseg_bundle.benchmarks.commands import as_flag, as_list  # noqa: E402
from vqseg_bundle.benchmarks.covid_report import write_covid_report  # noqa: E402
from vqseg_bundle.benchmarks.paths import SPEC_DIR, resolve  # noqa: E402
from vqseg_bundle.benchmarks.protocols import load_protocols  # noqa: E402
from vqseg_bundle.benchmarks.runner import run_benchmark  # noqa: E402
from vqseg_bundle.data.covid_semiseg import prepare_covid_semiseg  # noqa: E402

PROTOCOLS = load_protocols(SPEC_DIR / "covid_protocols.yaml")
#: labeled-only, UniMatch, and the bundle's VQ-Seg configuration (QPM as UniMatch's perturbation on every level)
DEFAULT_VARIANTS = ("labeled_only", "unimatch", "vqp_unimatch_qpm_all")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SOURCE = str(REPO.parent / "shared" / "data" / "covid_semiseg")
#: the labeled training slices of the prepared split (the ``labeled<N>`` folder of the results)
LABELED_SLICES = 40


class Benchmark:
    """COVID-SemiSeg benchmark (see the module docstring)."""

    def run(
        self,
        protocol: str = "cpu",
        variants: Any = DEFAULT_VARIANTS,
        seeds: Any = DEFAULT_SEEDS,
        dataset_dir: str = "outputs/covid_semiseg",
        source: str = DEFAULT_SOURCE,
        work_dir: str = "outputs/benchmark",
        results_dir: str = "results",
        docs_file: str = "docs/results.md",
        extra: dict | None = None,
        force: bool = False,
        dry_run: bool = False,
        timeout: float | None = None,
        report: bool = True,
    ) -> None:
        """Train, validate and test ``variants`` x ``seeds`` under ``protocol``, then rewrite the report.

        Args:
            protocol: a protocol of ``configs/benchmarks/covid_protocols.yaml`` (``cpu``, ``smoke``).
            variants: variant names of ``configs/benchmarks/acdc_variants.yaml``.
            seeds: training seeds; each (variant, seed) is one run.
            dataset_dir: the prepared data set (its ``dataset.json`` is written from ``source`` when missing).
            source: the COVID-SemiSeg folder.
            work_dir, results_dir, docs_file: as ``scripts/benchmark_acdc.py``.
            extra: further config overrides for every run.
            force: rerun runs whose ``run.json`` already says ok.
            dry_run: print the commands only.
            timeout: seconds allowed per subprocess.
            report: rewrite the docs section at the end.
        """
        force, dry_run, report = as_flag(force, "force"), as_flag(dry_run, "dry_run"), as_flag(report, "report")
        data = resolve(dataset_dir)
        if not (data / "dataset.json").exists():
            print(f"wrote {prepare_covid_semiseg(source, data)}", flush=True)
        self.records = []
        for seed in as_list(seeds, "seeds"):
            self.records += run_benchmark(
                protocol=protocol,
                labeled=[LABELED_SLICES],
                variants=[str(v) for v in as_list(variants, "variants")],
                dataset_dir=str(data),
                dataset_archive=None,
                work_dir=resolve(work_dir),
                results_dir=resolve(results_dir),
                seed=int(seed),
                extra=extra,
                iterations=None,
                val_every=None,
                force=force,
                dry_run=dry_run,
                timeout=timeout,
                protocols=PROTOCOLS,
                dataset="covid",
                test_split="test",
            )
        if report and not dry_run:
            self.report(results_dir=results_dir, docs_file=docs_file)

    def report(self, results_dir: str = "results", docs_file: str = "docs/results.md") -> None:
        """Rebuild the COVID-SemiSeg section of ``docs_file`` from ``results_dir``."""
        write_covid_report(resolve(results_dir), resolve(docs_file))
        print(f"wrote the COVID-SemiSeg section of {resolve(docs_file)}", flush=True)


if __name__ == "__main__":
    fire.Fire(Benchmark)
