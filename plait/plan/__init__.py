"""plait plan: memory per rank and step time of a layout before any GPU is booked, and a
search over layouts. Pure arithmetic on the model's shape; nothing is allocated."""

from plait.plan.bubble import bubble_fraction, bubble_ratio, inflight_microbatches
from plait.plan.hardware import GPUS, INTERCONNECTS, Cluster, make_cluster
from plait.plan.memory import Memory, plan_memory, zero_model_states
from plait.plan.search import Candidate, search
from plait.plan.shapes import Job, Layout, ModelShape
from plait.plan.steptime import StepTime, step_time

__all__ = [
    "GPUS", "INTERCONNECTS", "Candidate", "Cluster", "Job", "Layout", "Memory", "ModelShape",
    "StepTime", "bubble_fraction", "bubble_ratio", "inflight_microbatches", "make_cluster",
    "plan_memory", "search", "step_time", "zero_model_states",
]  # fmt: skip
