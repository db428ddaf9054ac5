"""Build reports: report.json (versioned schema), JUnit XML for CI, report.html with plots."""

from edgefold.report.html import write_html
from edgefold.report.junit import write_junit

REPORT_SCHEMA = 2

__all__ = ["REPORT_SCHEMA", "write_html", "write_junit"]
