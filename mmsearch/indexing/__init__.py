"""Indexing in stages: plan (pure) -> decode executor -> encode -> write sink, run by ``Indexer``."""

from .executors import DecodeExecutor, LocalExecutor
from .plan import UNSEALED, Job, Plan
from .report import STAGES, IndexReport, NullProgress, Progress
from .runner import Indexer

__all__ = ["STAGES", "UNSEALED", "DecodeExecutor", "IndexReport", "Indexer", "Job", "LocalExecutor", "NullProgress",
           "Plan", "Progress"]
