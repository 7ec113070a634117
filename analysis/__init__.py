"""fANOVA, variant statistics and the Plotly report of lstm-odyssey (never imports torch).

The Python API is :mod:`analysis.api` (``load(url, study)`` -> ``StudyAnalysis``); the report is
:func:`analysis.report.build_report`. This module stays import-light: the CLI reads ``TARGETS`` from it.
"""

#: Trial columns the analysis can take as its target (lower is better unless the spec says maximize).
TARGETS = ("best_test", "best_valid", "final_test", "final_valid", "seconds")
