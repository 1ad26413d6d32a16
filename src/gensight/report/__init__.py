"""Tables and figures for people to read: matplotlib figures and the HTML report
(:func:`build_report`, what ``gensight report`` and ``gensight demo`` write)."""

from gensight.report.run import DEFAULT_METHODS, Report, ReportError, build_report, default_shifts

__all__ = ["DEFAULT_METHODS", "Report", "ReportError", "build_report", "default_shifts"]
