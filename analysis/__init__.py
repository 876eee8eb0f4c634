"""Offline analysis of the worker's outputs (needs the `analysis` extra: scipy).

`analysis.ab_stats` turns `ABMetrics` v2 per-unit totals into the numbers analysts act on: per-variant
means and lifts with intervals by randomisation unit, the SRM check and an always-valid interval for
repeated looks. Nothing in `worker/` or `schemas/` imports this package.
"""
