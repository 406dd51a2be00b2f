"""``fetalkit batch``: one job over a whole archive, in local processes or on Ray, resumable.

Every input is processed by :func:`process_one` (in this process, a local
worker process or a Ray task): its outputs are written into a private staging
folder and renamed into place only when the input is finished, then the
input's entry is appended to the journal.  A rerun skips inputs whose entry
says done (same size and modification time, or failing that the same SHA-256)
and whose outputs are still there, and retries the failed ones.  Inputs are
only ever read: an output that would land on an input file is refused.

Local workers die with the batch (``kill -9`` included), and a worker that
crashes (a decoder's segfault) costs only the input it was reading: the inputs
in flight with it are rerun one at a time in a fresh worker, and the one that
crashes it again is recorded as failed.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

from fetalkit.batch.inputs import (MANIFEST_COLUMNS, STATE_DIR, Entry, Journal, compact_journal, find_inputs,
                                   key, kind_of, on_disk, read_journal, sha256_of)
from fetalkit.batch.jobs import JOBS, BatchJob, BatchOptions, FileRun
from fetalkit.deid import load_or_create_key
from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.images import atomic_write_bytes
from fetalkit.io.inputs import inside, os_error, printable, refuse_overwrite
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
    ignored: int = 0       # files the job does not take, FIFOs, sockets
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[Entry] = field(default_factory=list)
    ignored_inputs: list[Entry] = field(default_factory=list)  # each with its reason in ``error``

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
    """Run the job on one input file ``src`` (``rel`` below the archive, as the file system names it);
    never raises for a bad input.  The entry names the input by :func:`key`."""
    src_path, out_path = Path(src), Path(out_dir)
    entry = Entry(input=key(rel), status="failed")
    stage = out_path / STATE_DIR / "partial" / uuid.uuid4().hex
    t0 = time.perf_counter()
    try:
        try:
            st = src_path.stat()
            entry.size_bytes, entry.mtime_ns = st.st_size, st.st_mtime_ns
            entry.sha256 = sha256_of(src_path)
        except OSError as e:  # no permission, vanished since the listing
            raise os_error(src_path, e) from None
        run = built_job(job_name, options)
        stage.mkdir(parents=True)
        entry.result = run(src_path, stage, src_path.name)
        entry.outputs = _move_into_place(stage, out_path, Path(rel).parent, src_path, _archive_root(src, rel))
        entry.status = "done"
    except FetalkitError as e:
        if getattr(e, "fields", None):  # what stands of a refused input (its domain score)
            entry.result = dict(e.fields)
        message = printable(str(e).replace("\n", " "))
        entry.error = message if printable(src_path.name) in message else f"{printable(src_path)}: {message}"
    except OSError as e:
        entry.error = _os_failure(src_path, e)
    except Exception as e:  # a decoder or library fault on one file must not stop an archive
        entry.error = printable(f"{src_path}: unexpected {type(e).__name__}: {e}".replace("\n", " "))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        entry.seconds = time.perf_counter() - t0
    return entry


def _os_failure(src: Path, e: OSError) -> str:
    """One line for an OS error while a job ran: on the input itself, or on writing the outputs."""
    if e.filename is None or os.fspath(e.filename) == os.fspath(src):
        return str(os_error(src, e))
    return (f"{printable(src)}: cannot write {printable(e.filename)} ({(e.strerror or str(e)).lower()}); "
            "check the free space and permissions of --out")


def _archive_root(src: str, rel: str) -> Path:
    """SRC of the batch, from an input's path and its path below SRC."""
    return Path(src).parents[len(Path(rel).parts) - 1]


def _move_into_place(stage: Path, out_dir: Path, rel_parent: Path, src: Path, root: Path) -> list[str]:
    """Rename the staged outputs to their final names, after checking that none of them lands in the archive."""
    staged = sorted(p for p in stage.rglob("*") if p.is_file())
    dests = [out_dir / rel_parent / f.relative_to(stage) for f in staged]
    for dest in dests:
        # a link in --out (out/heads -> SRC/heads) would make a rename replace an input
        refuse_overwrite([src], [dest])
        if inside(dest, root) and not inside(dest, out_dir):
            raise InputError(f"{printable(dest)}: this output would land in the archive {printable(root)} "
                             f"(a link in {printable(out_dir)}?); inputs are never written, choose another --out")
    moved = []
    for f, dest in zip(staged, dests):
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)  # atomic: a file under its final name is always complete
        moved.append(key(dest.relative_to(out_dir)))
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


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_init(parent_pid: int) -> None:
    """Start of a local worker: Ctrl-C is the parent's to handle, and the worker dies with the parent.

    Without this a ``kill -9`` of the batch leaves its workers (and so
    multiprocessing's resource tracker, which waits for them) running, finishing
    their inputs into a folder nobody records.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the watchdog below still ends the worker
    if os.getppid() != parent_pid:  # the parent died while this worker started
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="fetalkit-parent-watch").start()


def _watch_parent(parent_pid: int) -> None:
    """Portable fallback of PR_SET_PDEATHSIG: an orphan is adopted by another process, so its ppid changes."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: onnxruntime's thread pools do not survive a fork cleanly
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(os.getpid(),))


def _fill(pending: dict, tasks: Iterator[Task], limit: int, submit, stop: threading.Event) -> None:
    """Keep at most ``limit`` inputs in flight, so an archive of a million files is never queued at once."""
    while len(pending) < limit and not stop.is_set():
        t = next(tasks, None)
        if t is None:
            return
        pending[submit(t)] = t


def _run_processes(tasks: Iterator[Task], on_done: Callable[[Entry], None], stop: threading.Event,
                   workers: int) -> None:
    """Run on ``workers`` local processes; after a worker crash, find the input that caused it, then go on."""
    tasks = iter(tasks)
    while True:
        suspects = _run_pool(tasks, on_done, stop, workers)
        if not suspects:
            return
        _run_suspects(suspects, on_done, stop)


def _submit(pool: ProcessPoolExecutor, task: Task) -> Future:
    try:
        return pool.submit(process_one, *task)
    except BrokenProcessPool as e:  # broke since the last wait: the task becomes a suspect like those in flight
        f: Future = Future()
        f.set_exception(e)
        return f


def _run_pool(tasks: Iterator[Task], on_done: Callable[[Entry], None], stop: threading.Event,
              workers: int) -> list[Task]:
    """Run ``tasks`` until done or stopped: [] then; the tasks in flight when a worker died, else.

    Which of them killed the worker is unknown (a broken pool fails them all).
    """
    with _pool(workers) as pool:
        pending: dict[Future, Task] = {}
        _fill(pending, tasks, 2 * workers, lambda t: _submit(pool, t), stop)
        while pending:
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in finished if not f.cancelled()):
                wait(pending)  # the pool fails the others at once
                suspects = []
                for f, task in pending.items():
                    if f.cancelled():
                        continue
                    if isinstance(f.exception(), BrokenProcessPool):
                        suspects.append(task)
                    else:
                        on_done(_future_entry(f, task))
                return suspects
            for f in finished:
                task = pending.pop(f)
                if not f.cancelled():
                    on_done(_future_entry(f, task))
            if stop.is_set():
                for f in pending:
                    f.cancel()  # queued, not started: left pending for the next run
            _fill(pending, tasks, 2 * workers, lambda t: _submit(pool, t), stop)
    return []


def _run_suspects(suspects: list[Task], on_done: Callable[[Entry], None], stop: threading.Event) -> None:
    """Rerun each input that was in flight at a crash alone in one worker: one that crashes it is to blame."""
    todo = list(suspects)
    while todo and not stop.is_set():
        with _pool(1) as pool:
            while todo and not stop.is_set():
                task = todo.pop(0)
                f = _submit(pool, task)
                wait([f])
                if isinstance(f.exception(), BrokenProcessPool):
                    on_done(_crashed(task))
                    break  # a fresh worker for the rest
                on_done(_future_entry(f, task))


def _crashed(task: Task) -> Entry:
    return Entry(input=key(task[3]), status="failed",
                 error=f"{printable(task[2])}: the worker crashed on this input (a fault in a decoder, or out of "
                       "memory); rerun to retry, or leave the file out")


def _future_entry(f: Future, task: Task) -> Entry:
    """The entry a worker returned; a failure to get it (an entry that would not pickle) is that input's failure."""
    try:
        return f.result()
    except BrokenProcessPool:
        return _crashed(task)
    except Exception as e:  # noqa: BLE001 - one input's failure, whatever it is
        return Entry(input=key(task[3]), status="failed",
                     error=printable(f"{task[2]}: unexpected {type(e).__name__}: {e}".replace("\n", " ")))


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
                    on_done(Entry(input=key(task[3]), status="failed",
                                  error=f"{printable(task[2])}: Ray task failed ({type(e).__name__}); rerun to retry"))
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


def _is_done(prev: Optional[Entry], src: Path, out_dir: Path) -> Optional[Entry]:
    """The earlier entry when the input is done and unchanged and its outputs are all there, else None.

    An input that cannot be read now is not done: it is run again, and its row says why it fails.
    """
    if prev is None or prev.status != "done" or not all(on_disk(out_dir, o) for o in prev.outputs):
        return None
    try:
        st = src.stat()
        if (st.st_size, st.st_mtime_ns) == (prev.size_bytes, prev.mtime_ns):
            return prev
        if st.st_size == prev.size_bytes and sha256_of(src) == prev.sha256:  # copied or touched, not changed
            return replace(prev, mtime_ns=st.st_mtime_ns)
    except OSError:
        return None
    return None


def _check_out_dir(src: Path, out_dir: Path) -> None:
    """Refuse an --out whose outputs could land on the archive's own files (one line naming the fix)."""
    s, o = src.resolve(), out_dir.resolve()
    if o == s or (src.is_file() and o == s.parent):
        raise InputError(f"{printable(out_dir)}: is the archive itself; outputs go to another folder "
                         "(inputs are never modified)")
    if src.is_dir() and o.is_relative_to(s) and out_dir.is_dir():
        # left out of the inputs, so its files must be this batch's own (or none)
        names = [p.name for p in out_dir.iterdir()]
        if names and STATE_DIR not in names:
            raise InputError(f"{printable(out_dir)}: inside {printable(src)} and holds files of the archive; "
                             f"choose an --out outside {printable(src)}")
    if src.is_dir() and s.is_relative_to(o):
        # outputs mirror SRC's folders under --out: SRC/<its path below --out>/... would be written into SRC
        below = s.relative_to(o)
        if (s / below).exists():
            raise InputError(f"{printable(out_dir)}: holds {printable(src)}, whose folder {printable(below)} would "
                             f"receive outputs on top of the archive's files; choose an --out outside "
                             f"{printable(src)}")


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
        raise InputError(f"{printable(src)}: no such file or folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{printable(out_dir)}: exists and is not a folder; choose another --out")
    _check_out_dir(src, out_dir)
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
        options = replace(options, uid_key=load_or_create_key(state / "uid-key"))
    shutil.rmtree(state / "partial", ignore_errors=True)  # what a killed run was still writing
    root = src.parent if src.is_file() else src
    journal_path = state / "journal.jsonl"
    entries, todo = _scan(job, src, root, out_dir, read_journal(journal_path))
    ignored = [e for e in entries.values() if e.status == "ignored"]
    not_read = [e for e in entries.values() if e.status == "failed"]  # dangling links, unreadable files
    summary = BatchSummary(job.name, out_dir, skipped=sum(e.status == "done" for e in entries.values()),
                           ignored=len(ignored), ignored_inputs=ignored)
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

    tasks = ((job.name, options, str(root / rel), rel.as_posix(), str(out_dir)) for rel in todo)
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
    in_run = [entries[key(rel)] for rel in todo]
    summary.done = sum(e.status == "done" for e in in_run)
    summary.failures = not_read + [e for e in in_run if e.status == "failed"]
    summary.failed = len(summary.failures)
    summary.pending = sum(e.status == "pending" for e in in_run)
    summary.seconds = time.perf_counter() - t0
    return summary


def _scan(job: BatchJob, src: Path, root: Path, out_dir: Path, known: dict[str, Entry]
          ) -> tuple[dict[str, Entry], list[Path]]:
    """An entry for every file under ``src`` (done before, pending, ignored with its reason, or failed
    when it cannot be read), by :func:`key`; and the inputs to run, relative to ``root``."""
    files, passed = find_inputs(src, out_dir)
    entries: dict[str, Entry] = {}
    todo: list[Path] = []
    for rel in files:
        k, path = key(rel), root / rel
        try:
            kind = kind_of(path)
        except OSError as e:
            entries[k] = Entry(input=k, status="failed", error=str(os_error(path, e)))
            continue
        if kind not in job.kinds:
            entries[k] = Entry(input=k, status="ignored", error=_not_taken(job, kind, rel))
            continue
        prev = _is_done(known.get(k), path, out_dir)
        entries[k] = prev if prev is not None else Entry(input=k, status="pending")
        if prev is None:
            todo.append(rel)
    entries.update((e.input, e) for e in passed)
    return entries, todo


def _not_taken(job: BatchJob, kind: Optional[str], rel: Path) -> str:
    """Why the job passes over a file: its kind, or its suffix."""
    what = f"a {kind}; it takes {', '.join(sorted(job.kinds))}" if kind else \
        (printable(rel.suffix) if rel.suffix else "no suffix, no DICOM preamble")
    return f"not an input of {job.name} ({what})"


def _write_tables(job: BatchJob, out_dir: Path, entries: dict[str, Entry]) -> None:
    def text(row: dict) -> dict:  # a job's cell may hold a raw name: never let it stop the tables
        return {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}
    write_csv_rows(out_dir / "manifest.csv", [text(e.manifest_row()) for e in entries.values()], MANIFEST_COLUMNS)
    columns = ["input", *job.columns]
    rows = [text({"input": e.input, **e.result}) for e in entries.values() if e.status == "done"]
    write_csv_rows(out_dir / "results.csv", rows, columns)
