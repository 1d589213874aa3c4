"""Reports built from finished runs' numbers: plain rows in, markdown, parquet and PNG figures out.

No Ray and no MLflow here: the rows may come from MLflow child runs or from an earlier `results.parquet`, so a
report can be rebuilt (`--report-only`) and tested without a cluster."""

from corrhash.report.ablation import paired_differences, summarise, write_report

__all__ = ["paired_differences", "summarise", "write_report"]
