"""Archive-scale batch jobs: ``fetalkit batch JOB SRC --out DIR`` (local processes or Ray), resumable."""

from fetalkit.batch.jobs import JOBS, BatchOptions
from fetalkit.batch.runner import BatchSummary, run_batch

__all__ = ["JOBS", "BatchOptions", "BatchSummary", "run_batch"]
