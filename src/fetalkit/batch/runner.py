"""``fetalkit batch``: one job over a whole archive, in local processes or on Ray, resumable.

Every input is processed by :func:`process_one` (in this process, a local
worker process or a Ray task): its outputs are written into a private staging
folder and renamed into place only when the input is finished, then the
input's entry is appended to the journal.  A rerun skips inputs whose entry
says done (same size and modification time, or failing that the same SHA-256)
and whose outputs are still there, and retries the failed ones.  Inputs are
only ever read.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

from fetalkit.batch.inputs import (MANIFEST_COLUMNS, STATE_DIR, Entry, Journal, compact_journal, find_inputs,
                                   kind_of, read_journal, sha256_of)
from fetalkit.batch.jobs import JOBS, BatchJob, BatchOptions, FileRun
from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.images import atomic_write_bytes
from fetalkit.io.jobs import write_csv_rows

# (job name, options) -> the built job, kept for the life of a worker process so models load once.
_BUILT: dict[tuple[str, BatchOptions], FileRun] = {}


@dataclass
class BatchSummary:
    job: str
    out_dir: Path
    done: int = 0          # finished in this run
    skipped: int = 0       # done by an earlier run
    failed: int = 0
    pending: int = 0       # not reached (interrupted)
    ignored: int = 0       # files the job does not take
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[Entry] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.out_dir / "manifest.csv"

    @property
    def results(self) -> Path:
        return self.out_dir / "results.csv"


def built_job(job_name: str, options: BatchOptions) -> FileRun:
    key = (job_name, options)
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = JOBS[job_name].build(options)
    return _BUILT[key]


def process_one(job_name: str, options: BatchOptions, src: str, rel: str, out_dir: str) -> Entry:
    """Run the job on one input file ``src`` (``rel`` below the archive); never raises for a bad input."""
    src_path, out_path = Path(src), Path(out_dir)
    entry = Entry(input=rel, status="failed")
    stage = out_path / STATE_DIR / "partial" / uuid.uuid4().hex
    t0 = time.perf_counter()
    try:
        st = src_path.stat()
        entry.size_bytes, entry.mtime_ns = st.st_size, st.st_mtime_ns
        entry.sha256 = sha256_of(src_path)
        run = built_job(job_name, options)
        stage.mkdir(parents=True)
        entry.result = run(src_path, stage, src_path.name)
        entry.outputs = _move_into_place(stage, out_path, Path(rel).parent)
        entry.status = "done"
    except FetalkitError as e:
        message = str(e).replace("\n", " ")
        entry.error = message if src_path.name in message else f"{src_path}: {message}"
    except OSError as e:
        entry.error = f"{src_path}: cannot read or write ({e.strerror or e}); check the file and the free space"
    except Exception as e:  # a decoder or library fault on one file must not stop an archive
        entry.error = f"{src_path}: unexpected {type(e).__name__}: {e}".replace("\n", " ")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        entry.seconds = time.perf_counter() - t0
    return entry


def _move_into_place(stage: Path, out_dir: Path, rel_parent: Path) -> list[str]:
    moved = []
    for f in sorted(p for p in stage.rglob("*") if p.is_file()):
        dest = out_dir / rel_parent / f.relative_to(stage)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)  # atomic: a file under its final name is always complete
        moved.append(dest.relative_to(out_dir).as_posix())
    return moved


# --------------------------------------------------------------------------- executors
# Each runs ``tasks`` (argument tuples of process_one) and calls ``on_done`` with every
# entry as it finishes.  Once ``stop`` is set they start no new input and return when
# the inputs in progress have finished.

Task = tuple[str, BatchOptions, str, str, str]


def _run_here(tasks: Iterator[Task], on_done: Callable[[Entry], None], stop: threading.Event) -> None:
    for t in tasks:
        if stop.is_set():
            return
        on_done(process_one(*t))


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops


def _fill(pending: dict, tasks: Iterator[Task], limit: int, submit, stop: threading.Event) -> None:
    """Keep at most ``limit`` inputs in flight, so an archive of a million files is never queued at once."""
    while len(pending) < limit and not stop.is_set():
        t = next(tasks, None)
        if t is None:
            return
        pending[submit(t)] = t


def _run_processes(tasks: Iterator[Task], on_done: Callable[[Entry], None], stop: threading.Event,
                   workers: int) -> None:
    # spawn, not fork: onnxruntime's thread pools do not survive a fork cleanly
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_ignore_sigint) as pool:
        pending: dict = {}
        _fill(pending, tasks, 2 * workers, lambda t: pool.submit(process_one, *t), stop)
        while pending:
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in finished:
                task = pending.pop(f)
                if not f.cancelled():
                    on_done(_future_entry(f, task))
            if stop.is_set():
                for f in pending:
                    f.cancel()  # queued, not started: left pending for the next run
            _fill(pending, tasks, 2 * workers, lambda t: pool.submit(process_one, *t), stop)


def _future_entry(f, task: Task) -> Entry:
    try:
        return f.result()
    except BrokenProcessPool:
        return Entry(input=task[3], status="failed",
                     error=f"{task[2]}: the worker process died on this file (out of memory?); rerun to retry")


def _run_ray(tasks: Iterator[Task], on_done: Callable[[Entry], None], stop: threading.Event, address: str,
             workers: int) -> None:
    try:
        import ray
    except ModuleNotFoundError:
        raise InputError("--ray needs Ray: pip install 'fetalkit[cluster]'") from None
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise InputError(f"--ray {address}: cannot connect to a Ray cluster ({e}); start one with "
                                 "'ray start --head' or use --ray local") from None
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(process_one)
        limit = 2 * max(workers, int(ray.cluster_resources().get("CPU", workers)))
        pending: dict = {}
        _fill(pending, tasks, limit, lambda t: remote.remote(*t), stop)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    on_done(ray.get(ref))
                except ray.exceptions.RayError as e:  # a worker or node lost mid-file
                    on_done(Entry(input=task[3], status="failed",
                                  error=f"{task[2]}: Ray task failed ({type(e).__name__}); rerun to retry"))
            _fill(pending, tasks, limit, lambda t: remote.remote(*t), stop)
    finally:
        if started:
            ray.shutdown()


class _CtrlC:
    """Ctrl-C once: finish the inputs in progress and start no more.  Twice: stop at once,
    as a kill would (the journal keeps every input that finished; the next run cleans up)."""

    def __init__(self, stop: threading.Event):
        self.stop, self.previous = stop, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set():
            os.write(2, b"\nstopped at once; rerun the same command to resume\n")
            os._exit(130)
        self.stop.set()
        os.write(2, b"\nfinishing the inputs in progress (Ctrl-C again to stop at once)\n")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# --------------------------------------------------------------------------- the batch


def _lock(state: Path):
    f = open(state / "lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise InputError(f"{state.parent}: another fetalkit batch is writing here; wait for it to finish "
                         "or choose another --out") from None
    return f


def _check_job_record(state: Path, job: BatchJob, options: BatchOptions) -> None:
    """A folder holds one job with one set of options, or its outputs would mix."""
    record_path = state / "job.json"
    record = {"job": job.name, "options": options.fingerprint()}
    if not record_path.exists():
        atomic_write_bytes(record_path, json.dumps(record, indent=1).encode())
        return
    old = json.loads(record_path.read_text())
    if old != record:
        changed = [k for k in record["options"] if old.get("options", {}).get(k) != record["options"][k]]
        what = f"a {old.get('job')!r} batch" if old.get("job") != job.name else \
            "this batch with other options (" + ", ".join(f"{k}={old['options'].get(k)!r}" for k in changed) + ")"
        raise InputError(f"{state.parent}: holds {what}; rerun with the same job and options to resume, "
                         "or choose another --out")


def _uid_key(state: Path) -> str:
    """The batch's secret UID key, made on the first run and kept for resumed runs."""
    path = state / "uid-key"
    if not path.exists():
        atomic_write_bytes(path, secrets.token_hex(32).encode())
        os.chmod(path, 0o600)
    return path.read_text().strip()


def _is_done(prev: Optional[Entry], src: Path, out_dir: Path) -> Optional[Entry]:
    """The earlier entry when the input is done and unchanged and its outputs are all there, else None."""
    if prev is None or prev.status != "done" or not all((out_dir / o).is_file() for o in prev.outputs):
        return None
    st = src.stat()
    if (st.st_size, st.st_mtime_ns) == (prev.size_bytes, prev.mtime_ns):
        return prev
    if st.st_size == prev.size_bytes and sha256_of(src) == prev.sha256:  # copied or touched, not changed
        return replace(prev, mtime_ns=st.st_mtime_ns)
    return None


def run_batch(job_name: str, src: Path, out_dir: Path, options: BatchOptions = BatchOptions(), workers: int = 1,
              ray_address: Optional[str] = None,
              on_start: Optional[Callable[[int], None]] = None,
              on_file: Optional[Callable[[Entry], None]] = None) -> BatchSummary:
    """Run ``job_name`` on every file under ``src``; outputs mirror the archive's folders under ``out_dir``.

    Parameters
    ----------
    job_name : a key of ``fetalkit.batch.jobs.JOBS``.
    src : an archive folder (searched recursively) or one file.
    out_dir : output folder; ``manifest.csv``, ``results.csv`` and the state folder ``.batch/`` go there.
    options : the job's options (model, pixel size, overlays).
    workers : local worker processes (1: in this process), or Ray CPUs for ``ray_address='local'``.
    ray_address : None (local), ``'local'`` (start a Ray instance here) or a cluster address
        (``'auto'``, ``'ray://head:10001'``); every node must see ``src`` and ``out_dir`` at the same paths.
    on_start : called with the number of inputs to process in this run.
    on_file : called with every entry as its input finishes.

    Returns
    -------
    BatchSummary (counts, failures); raises InputError for a bad job, folder or option.
    """
    if job_name not in JOBS:
        raise InputError(f"unknown batch job {job_name!r}; choose one of {', '.join(JOBS)}")
    job = JOBS[job_name]
    src, out_dir = Path(src), Path(out_dir)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose another --out")
    if out_dir.resolve() == src.resolve() or (src.is_file() and out_dir.resolve() == src.parent.resolve()):
        raise InputError(f"{out_dir}: is the archive itself; outputs go to another folder (inputs are never modified)")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    state = out_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    lock = _lock(state)
    try:
        return _run_locked(job, src, out_dir, state, options, workers, ray_address, on_start, on_file)
    finally:
        lock.close()


def _run_locked(job: BatchJob, src: Path, out_dir: Path, state: Path, options: BatchOptions, workers: int,
                ray_address: Optional[str], on_start, on_file) -> BatchSummary:
    t0 = time.perf_counter()
    _check_job_record(state, job, options)
    if job.name == "deid":
        options = replace(options, uid_key=_uid_key(state))
    shutil.rmtree(state / "partial", ignore_errors=True)  # what a killed run was still writing
    root = src.parent if src.is_file() else src
    journal_path = state / "journal.jsonl"
    known = read_journal(journal_path)
    entries: dict[str, Entry] = {}
    todo: list[str] = []
    for rel_path in find_inputs(src, out_dir):
        rel, path = rel_path.as_posix(), root / rel_path
        kind = kind_of(path)
        if kind not in job.kinds:
            what = f"a {kind}" if kind else "not an image, video or DICOM file"
            entries[rel] = Entry(input=rel, status="ignored", error=f"{what}; {job.name} takes "
                                                                    f"{', '.join(sorted(job.kinds))}")
            continue
        prev = _is_done(known.get(rel), path, out_dir)
        entries[rel] = prev if prev is not None else Entry(input=rel, status="pending")
        if prev is None:
            todo.append(rel)
    summary = BatchSummary(job.name, out_dir, skipped=sum(e.status == "done" for e in entries.values()),
                           ignored=sum(e.status == "ignored" for e in entries.values()))
    if todo:
        # build once here: a bad --model or --pixel-csv fails now, not once per file
        threads = max(1, (os.cpu_count() or 2) // workers) if ray_address is None else 1
        options = replace(options, threads=threads)
        built_job(job.name, options)
    if on_start:
        on_start(len(todo))
    journal = Journal(journal_path)

    def on_done(entry: Entry) -> None:
        journal.append(entry)
        entries[entry.input] = entry
        if on_file:
            on_file(entry)

    tasks = ((job.name, options, str(root / rel), rel, str(out_dir)) for rel in todo)
    stop = threading.Event()
    try:
        with _CtrlC(stop):
            if ray_address is not None:
                _run_ray(tasks, on_done, stop, ray_address, workers)
            elif workers == 1:
                _run_here(tasks, on_done, stop)
            else:
                _run_processes(tasks, on_done, stop, workers)
    finally:
        summary.interrupted = stop.is_set()
        journal.close()
        _write_tables(job, out_dir, entries)
        compact_journal(journal_path, entries.values())
        shutil.rmtree(state / "partial", ignore_errors=True)
    in_run = [entries[rel] for rel in todo]
    summary.done = sum(e.status == "done" for e in in_run)
    summary.failures = [e for e in in_run if e.status == "failed"]
    summary.failed = len(summary.failures)
    summary.pending = sum(e.status == "pending" for e in in_run)
    summary.seconds = time.perf_counter() - t0
    return summary


def _write_tables(job: BatchJob, out_dir: Path, entries: dict[str, Entry]) -> None:
    write_csv_rows(out_dir / "manifest.csv", [e.manifest_row() for e in entries.values()], MANIFEST_COLUMNS)
    columns = ["input", *job.columns]
    rows = [{"input": e.input, **e.result} for e in entries.values() if e.status == "done"]
    write_csv_rows(out_dir / "results.csv", rows, columns)
