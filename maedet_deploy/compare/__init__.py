"""The one output comparator: the same inputs through two runners (two backends or two
models), outputs judged by pluggable metrics (tolerances, cosine, SQNR; calib adds
detection agreement)."""

from .comparator import (CompareResult, Metric, OutputAgreement, ReferenceRun, as_batch, compare_runners,
                         compare_with, pair_outputs, random_feeds, run_reference, valid_items)
from .images import image_feeds
from .metrics import DEFAULT_ATOL, DEFAULT_RTOL, OutputStats, combined_sqnr_db, compare_arrays, finite_or_none

__all__ = ["CompareResult", "Metric", "OutputAgreement", "ReferenceRun", "as_batch", "compare_runners", "compare_with",
           "pair_outputs", "random_feeds", "run_reference", "valid_items", "image_feeds", "DEFAULT_ATOL",
           "DEFAULT_RTOL", "OutputStats", "combined_sqnr_db", "compare_arrays", "finite_or_none"]
