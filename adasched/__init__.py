"""adasched: score-optimal sampling schedules for diffusion models."""

__version__ = "0.1.0"
