"""search -> export -> calibrate -> bench -> report, resumable stage by stage."""

from .run import PipelineResult, PipelineSettings, run_pipeline

__all__ = ["PipelineResult", "PipelineSettings", "run_pipeline"]
