"""The ACDC benchmark behind ``scripts/benchmark_acdc.py``: its protocols and variants (read from
``configs/benchmarks/``), the runner (training and evaluation subprocesses, the collected artefacts) and the
report (the ACDC section of ``docs/results.md`` and its plots).

Modules: ``paths`` (bundle root, default locations), ``spec`` (reading and composing the YAML entries),
``protocols`` and ``variants`` (the loaded specifications), ``commands`` (the ``monai.bundle`` command lines),
``environment`` (the machine record), ``archive`` (unpacking a dataset archive), ``curves`` (TensorBoard scalars
to CSV), ``runner`` (one run and a whole benchmark), ``tabular`` (CSV and number helpers), ``publish`` (a marked
Markdown section, a figure), ``report`` (the per-protocol tables) and ``side_by_side`` (the bundle beside the
UniMatch peer).
"""
