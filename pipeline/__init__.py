"""Pipeline parallelism: stage split (split.py), schedule names and orders (schedules.py),
config checks (validate.py), the per-step runner the trainer delegates to (step.py), and a
schedule simulator with a timeline plotter (simulate.py, timeline.py)."""

from plait.pipeline.split import PipelineParts, split_model
from plait.pipeline.validate import check_pipeline

__all__ = ["PipelineParts", "split_model", "check_pipeline"]
