"""The one timing loop (`measure`), its inputs (`make_feed`) and bench reports."""

from .baseline import eager_detector
from .feed import make_feed
from .measure import CV_THRESHOLD, LatencyStats, measure
from .report import REPORT_FORMATS, BenchResult, BenchRow, run_bench, to_csv, to_markdown, write_report

__all__ = ["CV_THRESHOLD", "REPORT_FORMATS", "eager_detector", "BenchResult", "BenchRow", "LatencyStats",
           "make_feed", "measure", "run_bench", "to_csv", "to_markdown", "write_report"]
