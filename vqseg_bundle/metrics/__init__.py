"""Per-case segmentation metrics with an explicit empty-mask policy, CSV reports and an evaluator handler."""

from vqseg_bundle.metrics.case_metrics import (
    EMPTY_DISTANCE_MODES,
    METRIC_NAMES,
    STATUSES,
    CaseClassMetrics,
    compute_case_metrics,
    resolve_class_names,
)
from vqseg_bundle.metrics.handler import CaseMetricsHandler, spacing_from_meta
from vqseg_bundle.metrics.report import OVERALL, format_summary_table, summarize, write_case_csv, write_summary_csv

__all__ = [
    "CaseClassMetrics",
    "CaseMetricsHandler",
    "EMPTY_DISTANCE_MODES",
    "METRIC_NAMES",
    "OVERALL",
    "STATUSES",
    "compute_case_metrics",
    "format_summary_table",
    "resolve_class_names",
    "spacing_from_meta",
    "summarize",
    "write_case_csv",
    "write_summary_csv",
]
