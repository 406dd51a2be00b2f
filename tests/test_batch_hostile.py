"""`fetalkit batch` under hostile input: kill -9, outputs aimed at the archive, odd names and files, crashes.

Each test fails on a batch that loses or blames the wrong input, writes into the
archive, blocks, or leaves processes running.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import pytest

from fetalkit.batch import run_batch
from fetalkit.batch.inputs import read_journal
from fetalkit.errors import InputError
from fetalkit.synth.phantom import head_phantom

LATIN1 = b"caf\xe9.png"  # an old archive's name: not UTF-8


def png_bytes(seed: int = 0) -> bytes:
    ok, buf = cv2.imencode(".png", head_phantom(seed=seed, shape_hw=(270, 400)).image)
    assert ok
    return buf.tobytes()


def make_images(folder: Path, n: int, prefix: str = "h") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = [png_bytes(i) for i in range(min(n, 3))]
    for i in range(n):
        (folder / f"{prefix}{i:03d}.png").write_bytes(data[i % len(data)])
    return folder


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["input"]: r for r in csv.DictReader(f)}


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root`` with its size, mtime and hash (what 'nothing changed' compares)."""
    return {os.fsdecode(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns,
                                              hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def cli(*args, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------- 1. kill -9


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state) of a live process from /proc, None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return None if state in "ZX" else (int(ppid), state)


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), {pid}
    while frontier:
        children = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in found:
                st = _proc_stat(int(entry))
                if st and st[0] in frontier:
                    children.add(int(entry))
        found |= children
        frontier = children
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_kill_9_of_the_batch_ends_its_workers_and_the_resource_tracker(tmp_path):
    src, out = make_images(tmp_path / "src", 300), tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fetalkit.cli", "batch", "mask", str(src), "--out", str(out),
                             "--workers", "2", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out / ".batch" / "journal.jsonl"
    t0 = time.monotonic()
    while not (journal.exists() and journal.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < 120, "the batch made no progress"
        time.sleep(0.05)
    children = _descendants(proc.pid)
    assert len(children) >= 3  # two workers and multiprocessing's resource tracker
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    t0 = time.monotonic()
    while (alive := {p for p in children if _proc_stat(p)}) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not alive, f"processes of the killed batch still run: {alive}"
    before = tree(out)
    time.sleep(1.5)
    assert tree(out) == before  # nothing writes into the folder any more
    assert len(read_journal(journal)) < 300  # it was killed mid-archive


# --------------------------------------------------------------------------- 2. outputs aimed at the archive


def test_out_inside_src_holding_archive_files_is_refused_and_nothing_is_written(tmp_path):
    src = make_images(tmp_path / "src", 2)
    sub = make_images(src / "sub", 1, prefix="old")  # part of the archive
    before = tree(src)
    with pytest.raises(InputError, match=r"inside .*src and holds files of the archive; choose an --out outside"):
        run_batch("mask", src, sub)
    res = cli("batch", "mask", src, "--out", sub)
    assert res.returncode == 1 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "holds files of the archive" in res.stderr
    assert tree(src) == before


def test_out_inside_src_is_allowed_when_new_empty_or_this_batchs_own(tmp_path):
    src = make_images(tmp_path / "src", 2)
    (src / "empty").mkdir()
    assert run_batch("mask", src, src / "empty").done == 2
    shutil.rmtree(src / "empty")
    s = run_batch("mask", src, src / "masked")
    assert (s.done, s.failed, s.ignored) == (2, 0, 0)  # its own outputs are not inputs
    again = run_batch("mask", src, src / "masked")  # holds .batch: this batch's folder
    assert (again.done, again.skipped) == (0, 2)
    assert set(read_csv(src / "masked" / "manifest.csv")) == {"h000.png", "h001.png"}


def test_src_inside_out_whose_outputs_would_land_on_inputs_is_refused(tmp_path):
    # SRC = T/arch holds arch/h000.png: its masked copy would be written to T/arch/h000.png, an input
    src = make_images(tmp_path / "arch", 1)
    make_images(src / "arch", 1)
    before = tree(src)
    with pytest.raises(InputError, match="would receive outputs on top of the archive's files"):
        run_batch("mask", src, tmp_path)
    assert tree(src) == before


def test_an_output_that_a_link_in_out_leads_into_the_archive_is_refused(tmp_path):
    src = make_images(tmp_path / "src" / "heads", 2).parent
    out = tmp_path / "out"
    out.mkdir()
    (out / "heads").symlink_to(src / "heads")  # out/heads/h000.png is the input itself
    before = tree(src)
    s = run_batch("mask", src, out)
    assert tree(src) == before  # the inputs were only read
    assert {e.input for e in s.failures} == {"heads/h000.png", "heads/h001.png"}
    assert all("would overwrite an input" in e.error or "would land in the archive" in e.error
               for e in s.failures)


# --------------------------------------------------------------------------- 3. names that are not UTF-8


def test_a_name_that_is_not_utf8_completes_and_resumes(tmp_path):
    src, out = make_images(tmp_path / "src", 3), tmp_path / "out"
    with open(os.fsencode(src) + b"/" + LATIN1, "wb") as f:
        f.write(png_bytes(5))
    s = run_batch("biometry-head", src, out, workers=2)
    assert (s.done, s.failed) == (4, 0), [e.error for e in s.failures]
    manifest = read_csv(out / "manifest.csv")
    assert manifest["caf\\xe9.png"]["status"] == "done"
    assert manifest["caf\\xe9.png"]["outputs"] == "caf\\xe9.png.overlay.png"
    assert "caf\\xe9.png" in read_csv(out / "results.csv")
    # the journal holds the same printable key (valid UTF-8 text, no raw surrogate)
    journal = (out / ".batch" / "journal.jsonl").read_bytes().decode("utf-8")
    assert "caf\\\\xe9.png" in journal and "udce9" not in journal
    assert (os.fsencode(out) + b"/caf\xe9.png.overlay.png") in [os.fsencode(p) for p in out.iterdir()]
    again = run_batch("biometry-head", src, out, workers=2)
    assert (again.done, again.skipped, again.failed) == (0, 4, 0)  # found done by its printable key


# --------------------------------------------------------------------------- 4. unreadable and vanishing files


def _deny(monkeypatch, names: set[str]) -> None:
    """Opening these files raises PermissionError, as chmod 000 does for a user who is not root."""
    import builtins

    import fetalkit.batch.inputs as batch_inputs
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name in names:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(batch_inputs, "open", fake_open, raising=False)


def test_a_file_that_cannot_be_opened_gets_one_line_and_the_rest_goes_on(tmp_path, monkeypatch):
    src, out = make_images(tmp_path / "src", 3), tmp_path / "out"
    (src / "IM0002").write_bytes(b"\0" * 128 + b"DICM")  # a DICOM known only by its preamble
    _deny(monkeypatch, {"h001.png", "IM0002"})
    s = run_batch("biometry-head", src, out)
    failures = {e.input: e.error for e in s.failures}
    assert set(failures) == {"h001.png", "IM0002"} and s.done == 2
    for name, error in failures.items():
        assert name in error and "permission denied" in error and "read permission" in error
        assert "\n" not in error
    assert read_csv(out / "manifest.csv")["IM0002"]["status"] == "failed"


def test_a_chmod_000_file_gets_one_line_and_the_rest_goes_on(tmp_path):
    src, out = make_images(tmp_path / "src", 3), tmp_path / "out"
    os.chmod(src / "h001.png", 0)
    try:
        (src / "h001.png").open("rb").close()
        pytest.skip("this user reads a chmod 000 file (root); the test above simulates it")
    except PermissionError:
        pass
    s = run_batch("biometry-head", src, out)
    assert s.done == 2 and [e.input for e in s.failures] == ["h001.png"]
    assert "permission denied" in s.failures[0].error and (out / "manifest.csv").is_file()


def test_a_file_that_vanishes_after_the_listing_is_named_on_first_and_resumed_runs(tmp_path, monkeypatch):
    import fetalkit.batch.runner as runner
    src, out = make_images(tmp_path / "src", 3), tmp_path / "out"
    real_find = runner.find_inputs

    def losing(name: str):
        def find_then_lose(*args):
            found = real_find(*args)
            (src / name).unlink()  # gone between listing and reading
            return found
        return find_then_lose
    monkeypatch.setattr(runner, "find_inputs", losing("h001.png"))
    first = run_batch("biometry-head", src, out)
    assert first.done == 2 and [e.input for e in first.failures] == ["h001.png"]
    assert "vanished" in first.failures[0].error and "h001.png" in first.failures[0].error
    make_images(src, 3)
    monkeypatch.setattr(runner, "find_inputs", losing("h002.png"))
    again = run_batch("biometry-head", src, out)  # h002.png was done: checking that must not crash the run
    assert again.done == 1 and [e.input for e in again.failures] == ["h002.png"]
    assert "vanished" in again.failures[0].error
    assert read_csv(out / "manifest.csv")["h002.png"]["status"] == "failed"


def test_a_folder_that_cannot_be_listed_gets_a_failed_row(tmp_path, monkeypatch):
    src = make_images(tmp_path / "src", 2)
    make_images(src / "locked", 1)
    real_scandir = os.scandir

    def scandir(path="."):  # as chmod 000 on the folder does for a user who is not root
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    s = run_batch("biometry-head", src, tmp_path / "out")
    assert s.done == 2 and [e.input for e in s.failures] == ["locked/"]
    assert "cannot be listed" in s.failures[0].error and "locked" in s.failures[0].error
    assert read_csv(tmp_path / "out" / "manifest.csv")["locked/"]["status"] == "failed"


# --------------------------------------------------------------------------- 5. FIFOs, sockets, links, ignored files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifos_sockets_and_dangling_links_are_named_never_read_and_never_block(tmp_path):
    src, out = make_images(tmp_path / "src", 2), tmp_path / "out"
    os.mkfifo(src / "pipe.png")          # opening it would block forever
    os.mkfifo(src / "IM0009")            # so would looking for a DICOM preamble in it
    (src / "gone.png").symlink_to(src / "nowhere.png")
    (src / "notes.txt").write_text("not an input")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.png"))
    try:
        res = cli("batch", "mask", src, "--out", out, timeout=120)
    finally:
        sock.close()
    assert res.returncode == 1 and "Traceback" not in res.stderr
    manifest = read_csv(out / "manifest.csv")
    assert {k: r["status"] for k, r in manifest.items()} == {
        "h000.png": "done", "h001.png": "done", "pipe.png": "ignored", "IM0009": "ignored", "sock.png": "ignored",
        "gone.png": "failed", "notes.txt": "ignored"}
    assert "named pipe" in manifest["pipe.png"]["error"] and "socket" in manifest["sock.png"]["error"]
    assert manifest["notes.txt"]["error"] == "not an input of mask (.txt)"
    assert "dangling link" in manifest["gone.png"]["error"] and "gone.png" in res.stderr
    assert "4 ignored" in res.stdout
    for name in ("pipe.png", "IM0009", "sock.png", "notes.txt"):  # named on the console, not just counted
        assert f"ignored: {name}:" in res.stdout


# --------------------------------------------------------------------------- 6. a worker that crashes


CRASHY = '''
import os, signal
from fetalkit.batch import runner
_real = runner.process_one

def process_one(job, options, src, rel, out_dir):
    """The real one, but a segfault on any input named crash*: a decoder fault as seen from the batch."""
    if os.path.basename(src).startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return _real(job, options, src, rel, out_dir)
'''


def test_a_worker_that_crashes_costs_only_the_input_it_was_reading(tmp_path, monkeypatch):
    import fetalkit.batch.runner as runner
    (tmp_path / "crashy_batch.py").write_text(textwrap.dedent(CRASHY))
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get this sys.path too
    import crashy_batch
    monkeypatch.setattr(runner, "process_one", crashy_batch.process_one)
    src, out = make_images(tmp_path / "src", 8), tmp_path / "out"
    (src / "crash.png").write_bytes((src / "h000.png").read_bytes())
    s = run_batch("biometry-head", src, out, workers=2)
    assert [e.input for e in s.failures] == ["crash.png"]
    assert "worker crashed on this input" in s.failures[0].error and "crash.png" in s.failures[0].error
    assert s.done == 8
    manifest = read_csv(out / "manifest.csv")
    assert sorted(k for k, r in manifest.items() if r["status"] == "done") == [f"h{i:03d}.png" for i in range(8)]
