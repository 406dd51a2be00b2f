"""Long requests (masking a video, de-identifying a cine) as jobs on a bounded thread pool.

A job owns one folder: the upload goes in, the result comes out.  The upload is
deleted as soon as the job ends; the result when it has been downloaded, or after
``keep_s`` seconds unclaimed, or when the server stops.  The page polls a job's
progress (frames done of the total) while the event loop stays free.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from fetalkit.errors import FetalkitError, RequestError


def user_message(error: Exception | str, root: Path) -> str:
    """An error's message with the server's folders under ``root`` taken out: the user sees their
    own file name (``/tmp/fetalkit-web-x/3f2a.../scan.png: ...`` -> ``scan.png: ...``)."""
    if isinstance(error, str) or isinstance(error, FetalkitError):
        text = str(error)
    else:
        text = f"internal error ({type(error).__name__}: {error})"
    return re.sub(re.escape(str(root)) + r"(?:/[^/\s]+)*/", "", text)


@dataclass
class Job:
    """One job's state, as the polling endpoint reports it."""

    id: str
    kind: str                       # mask | deid
    name: str                       # the uploaded file's name
    work_dir: Path
    state: str = "queued"           # queued | running | done | failed
    done: int = 0                   # frames (or steps) finished
    total: Optional[int] = None     # None: not known in advance
    error: Optional[str] = None
    result: dict = field(default_factory=dict)   # what the page shows when done
    output: Optional[Path] = None                # the file to download
    finished_at: Optional[float] = None

    def progress(self, done: int, total: Optional[int] = None) -> None:
        self.done = done
        if total is not None:
            self.total = total

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "name": self.name, "state": self.state, "done": self.done,
                "total": self.total, "error": self.error, "result": self.result,
                "download": f"/api/jobs/{self.id}/result" if self.state == "done" and self.output else None}


class JobManager:
    """At most ``max_running`` jobs at once, ``max_pending`` queued or running; finished ones expire."""

    def __init__(self, root: Path, max_running: int, max_pending: int, keep_s: float):
        self.root, self.max_pending, self.keep_s = root, max_pending, keep_s
        self.pool = ThreadPoolExecutor(max_running, thread_name_prefix="fetalkit-job")
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def new_folder(self) -> Path:
        """A fresh folder under the server's temp root (for a job or a quick request)."""
        path = self.root / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def submit(self, kind: str, name: str, work_dir: Path, run: Callable[[Job], None],
               inputs: tuple[Path, ...] = ()) -> Job:
        """Queue ``run(job)`` (it sets ``job.output`` / ``job.result`` and reports progress);
        ``inputs`` are deleted when it ends.  RequestError 429 when the queue is full."""
        self.sweep()
        with self.lock:
            pending = sum(j.state in ("queued", "running") for j in self.jobs.values())
            if pending >= self.max_pending:
                raise RequestError(f"{pending} jobs are already queued; try again when one has finished", 429)
            job = Job(uuid.uuid4().hex, kind, name, work_dir)
            self.jobs[job.id] = job
        self.pool.submit(self._run, job, run, inputs)
        return job

    def _run(self, job: Job, run: Callable[[Job], None], inputs: tuple[Path, ...]) -> None:
        job.state = "running"
        try:
            run(job)
            job.state = "done"
        except Exception as e:  # every failure is reported to the page; the pool keeps serving
            job.error, job.state = user_message(e, self.root), "failed"
        finally:
            for p in inputs:
                p.unlink(missing_ok=True)
            job.finished_at = time.monotonic()

    def stage(self, kind: str, name: str, work_dir: Path, output: Path) -> Job:
        """Keep a file for a later request (a video to play live): a finished job that expires like one."""
        self.sweep()
        job = Job(uuid.uuid4().hex, kind, name, work_dir, state="done", output=output,
                  finished_at=time.monotonic())
        with self.lock:
            self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        self.sweep()
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(f"no job {job_id} (finished jobs are kept {self.keep_s / 60:g} min, "
                               "until their result is downloaded); upload the file again", 404)
        return job

    def discard(self, job: Job) -> None:
        """Forget a finished job and delete its folder (after its result was sent)."""
        with self.lock:
            self.jobs.pop(job.id, None)
        shutil.rmtree(job.work_dir, ignore_errors=True)

    def sweep(self) -> None:
        """Discard finished jobs older than ``keep_s``."""
        now = time.monotonic()
        with self.lock:
            old = [j for j in self.jobs.values() if j.finished_at is not None and now - j.finished_at > self.keep_s]
        for job in old:
            self.discard(job)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for job in list(self.jobs.values()):
            self.discard(job)
