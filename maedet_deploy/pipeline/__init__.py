"""search -> export -> calibrate -> bench -> report, resumable stage by stage."""

from .budget import Budget
from .run import PipelineResult, run_pipeline
from .settings import Plan, PipelineSettings, make_plan
from .summary import PipelineSummary

__all__ = ["Budget", "Plan", "PipelineResult", "PipelineSettings", "PipelineSummary", "make_plan", "run_pipeline"]
