"""Same inputs through two runners (two backends or two models), outputs compared with tolerances."""

from .compare import (DEFAULT_ATOL, DEFAULT_RTOL, CompareResult, OutputComparison, compare_arrays, compare_runners,
                      pair_outputs, random_feeds)
from .images import Preprocess, image_feeds, parse_triple

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "CompareResult", "OutputComparison", "Preprocess", "compare_arrays",
           "compare_runners", "image_feeds", "pair_outputs", "parse_triple", "random_feeds"]
