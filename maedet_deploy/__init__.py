"""maedet-deploy: zero-shot, latency-budgeted detection backbones, shipped as engines."""

__version__ = "0.1.0"
