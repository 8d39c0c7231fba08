"""The report: Table 1, figures, LaTeX values and an interactive HTML page, computed from a sweep
directory's files alone (``results.csv``, ``models.csv``, ``analysis/``); it never retrains or
reproves.

    from compact_proofs.report import make_report
    out_dir = make_report("runs/sweep-k4", seed=123)      # -> runs/sweep-k4/report/
"""

from compact_proofs.report.make import make_report as make_report

__all__ = ["make_report"]
