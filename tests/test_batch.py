"""`fetalkit batch` on a generated archive: every job, bad files, resume, a killed run, Ray."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from fetalkit.batch import BatchOptions, run_batch
from fetalkit.batch.inputs import Entry, Journal, read_journal
from fetalkit.biometry.head_job import measure_files
from fetalkit.demo import phantom_clip
from fetalkit.errors import InputError
from fetalkit.io.dicom import read_dicom, write_dicom
from fetalkit.synth.phantom import head_phantom

STUDY_UID = "1.2.826.0.1.3680043.8.498.1234567"
N_FRAMES = 120  # clips of the interrupted runs: long enough to be caught mid-archive


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


def _dicom(path: Path, frames: np.ndarray, **kw) -> None:
    write_dicom(path, frames, pixel_mm=0.3, **kw)
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID = "DOE^JANE", "12345", STUDY_UID
    ds.save_as(path)


def make_archive(root: Path) -> Path:
    """Stills, a clip, DICOM (a still, a cine, one without suffix) and broken or foreign files."""
    (root / "heads").mkdir(parents=True)
    (root / "clips").mkdir()
    (root / "dicom" / "series").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "heads" / f"h{i}.png"), head_phantom(seed=i, shape_hw=(270, 400)).image)
    (root / "heads" / "corrupt.png").write_bytes(b"\x89PNG not really")
    phantom_clip(root / "clips" / "clip.avi", n_frames=30, shape_hw=(180, 270))
    (root / "clips" / "broken.mp4").write_bytes(b"\x00" * 1000)
    still = head_phantom(seed=7, shape_hw=(270, 400), pixel_mm=0.3).image
    _dicom(root / "dicom" / "still.dcm", still)
    _dicom(root / "dicom" / "cine.dcm", np.stack([still] * 3), fps=10, new_series=True)
    shutil.copy(root / "dicom" / "still.dcm", root / "dicom" / "series" / "IM0001")  # DICOM known by its preamble
    (root / "dicom" / "fake.dcm").write_bytes((root / "heads" / "h0.png").read_bytes())
    (root / "notes.txt").write_text("not an input")
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("archive") / "arch")


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["input"]: r for r in csv.DictReader(f)}


def tree_hashes(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_biometry_batch_measures_as_the_cli_and_names_each_failure(archive, tmp_path):
    out = tmp_path / "out"
    s = run_batch("biometry-head", archive, out)
    assert (s.done, s.skipped, s.failed, s.ignored) == (5, 0, 3, 3)
    failures = {e.input: e.error for e in s.failures}
    assert set(failures) == {"heads/corrupt.png", "dicom/cine.dcm", "dicom/fake.dcm"}
    assert "corrupt.png" in failures["heads/corrupt.png"] and "3-frame cine" in failures["dicom/cine.dcm"]
    results, manifest = read_csv(out / "results.csv"), read_csv(out / "manifest.csv")
    # the same numbers as `fetalkit biometry head` on the same image
    cli = measure_files([archive / "heads" / "h1.png"], tmp_path / "cli", overlays=False)[0]
    for col in ("hc_px", "bpd_px", "ofd_px", "center_x_px", "angle_deg"):
        assert results["heads/h1.png"][col] == cli[col]
    # the DICOM carries its pixel size; the file without suffix is read as DICOM
    assert results["dicom/still.dcm"]["units"] == "mm"
    assert float(results["dicom/still.dcm"]["hc_mm"]) == pytest.approx(0.3 * float(results["dicom/still.dcm"]["hc_px"]), abs=0.02)
    assert results["dicom/series/IM0001"]["hc_mm"] == results["dicom/still.dcm"]["hc_mm"]
    assert manifest["notes.txt"]["status"] == "ignored" and manifest["clips/clip.avi"]["status"] == "ignored"
    row = manifest["heads/h0.png"]
    assert row["status"] == "done" and row["outputs"] == "heads/h0.png.overlay.png"
    assert row["sha256"] == hashlib.sha256((archive / "heads" / "h0.png").read_bytes()).hexdigest()
    assert (out / "heads" / "h0.png.overlay.png").is_file() and not (out / ".batch" / "partial").exists()


def test_rerun_skips_what_is_done_retries_failures_and_redoes_changed_inputs(archive, tmp_path):
    arch, out = tmp_path / "arch", tmp_path / "out"
    shutil.copytree(archive, arch)
    run_batch("biometry-head", arch, out)
    overlay_mtime = (out / "heads" / "h0.png.overlay.png").stat().st_mtime_ns
    again = run_batch("biometry-head", arch, out)
    assert (again.done, again.skipped, again.failed) == (0, 5, 3)  # the failures are retried, and fail again
    assert (out / "heads" / "h0.png.overlay.png").stat().st_mtime_ns == overlay_mtime
    shutil.copy(arch / "heads" / "h2.png", arch / "heads" / "corrupt.png")   # the user repairs a file
    cv2.imwrite(str(arch / "heads" / "h1.png"), head_phantom(seed=11, shape_hw=(270, 400)).image)  # and replaces one
    os.utime(arch / "heads" / "h0.png", ns=(1, 1))                            # and one is only touched
    third = run_batch("biometry-head", arch, out)
    assert (third.done, third.skipped, third.failed) == (2, 4, 2)
    results = read_csv(out / "results.csv")
    assert results["heads/corrupt.png"]["hc_px"] == results["heads/h2.png"]["hc_px"]
    assert len(read_journal(out / ".batch" / "journal.jsonl")) == 8  # compacted: one line per input


def test_mask_batch_in_two_processes_covers_the_targets_and_leaves_inputs_alone(archive, tmp_path):
    before = tree_hashes(archive)
    out = tmp_path / "out"
    s = run_batch("mask", archive, out, workers=2)
    assert tree_hashes(archive) == before  # nothing written or changed in the archive
    assert {e.input for e in s.failures} == {"heads/corrupt.png", "clips/broken.mp4", "dicom/fake.dcm"}
    assert s.done == 7 and s.ignored == 1
    results = read_csv(out / "results.csv")
    assert results["clips/clip.avi"]["frames"] == "30" and int(results["clips/clip.avi"]["frames_masked"]) > 0
    cap = cv2.VideoCapture(str(out / "clips" / "clip.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    cap.release()
    assert read_dicom(out / "dicom" / "cine.dcm").frames.shape[0] == 3
    assert (out / "dicom" / "series" / "IM0001.dcm").is_file()
    # every box the log says was masked is black in the written image
    masked = cv2.imread(str(out / "heads" / "h0.png"), cv2.IMREAD_GRAYSCALE)
    record = json.loads((out / "heads" / "h0.png.masklog.jsonl").read_text().splitlines()[0])
    assert record["masks"]
    for x, y, w, h in record["masks"]:
        assert masked[y:y + h, x:x + w].max() == 0


def test_deid_batch_keeps_one_study_together_across_workers_and_runs(archive, tmp_path):
    out = tmp_path / "out"
    s = run_batch("deid", archive / "dicom", out, workers=2)
    assert s.done == 3 and {e.input for e in s.failures} == {"fake.dcm"}
    uids = set()
    for name in ("still.dcm", "cine.dcm", "series/IM0001.dcm"):
        ds = pydicom.dcmread(out / name)
        assert str(ds.get("PatientName", "")) == "" and str(ds.get("PatientID", "")) == ""
        uids.add(ds.StudyInstanceUID)
    assert len(uids) == 1 and STUDY_UID not in uids
    (out / "cine.dcm").unlink()                      # lost output: redone on the next run, with the same key
    again = run_batch("deid", archive / "dicom", out)
    assert (again.done, again.skipped) == (1, 2)
    assert pydicom.dcmread(out / "cine.dcm").StudyInstanceUID in uids
    assert oct((out / ".batch" / "uid-key").stat().st_mode & 0o777) == "0o600"


def test_detect_and_aop_jobs_write_their_outputs(archive, tmp_path):
    s = run_batch("detect", archive / "heads", tmp_path / "det")
    assert s.done == 3
    records = json.loads((tmp_path / "det" / "h0.png.detections.json").read_text())
    assert records and all(r["file_name"] == "h0.png" and len(r["bbox"]) == 4 for r in records)
    assert read_csv(tmp_path / "det" / "results.csv")["h0.png"]["n_detections"] == str(len(records))
    a = run_batch("aop", archive / "heads", tmp_path / "aop", BatchOptions(overlays=False))
    # a head phantom has no pubic symphysis: each image either gives an angle with its label map, or fails by name
    for e in a.failures:
        assert e.input in e.error and not (tmp_path / "aop" / (e.input + ".labels.png")).exists()
    assert a.done + a.failed == 4


def test_a_folder_holds_one_job_and_one_run_at_a_time(archive, tmp_path):
    out = tmp_path / "out"
    run_batch("biometry-head", archive / "heads", out)
    with pytest.raises(InputError, match="biometry-head"):
        run_batch("mask", archive / "heads", out)
    with pytest.raises(InputError, match="pixel_mm"):
        run_batch("biometry-head", archive / "heads", out, BatchOptions(pixel_mm=0.2))
    with open(out / ".batch" / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another fetalkit batch"):
            run_batch("biometry-head", archive / "heads", out)
    with pytest.raises(InputError, match="unknown batch job"):
        run_batch("classify-everything", archive, out)
    with pytest.raises(InputError, match="is the archive itself"):
        run_batch("mask", archive, archive)
    with pytest.raises(InputError, match="no such file"):
        run_batch("mask", tmp_path / "missing", tmp_path / "o2")


def test_journal_skips_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.append(Entry(input="a.png", status="done", outputs=["a.png"]))
    j.close()
    with open(path, "a") as f:
        f.write('{"input": "b.png", "stat')           # what a kill mid-write leaves
    j = Journal(path)
    j.append(Entry(input="c.png", status="failed", error="c.png: bad"))
    j.close()
    assert {k: e.status for k, e in read_journal(path).items()} == {"a.png": "done", "c.png": "failed"}


def _wait_for_journal_lines(path: Path, n: int, proc, timeout_s: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"batch ended before {n} inputs finished: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("batch made no progress")


def test_interrupted_and_killed_runs_resume_with_nothing_half_written(tmp_path):
    arch, out = tmp_path / "clips", tmp_path / "out"
    arch.mkdir()
    for i in range(8):
        phantom_clip(arch / f"clip{i}.avi", n_frames=N_FRAMES, seed=i)
    cmd = [sys.executable, "-m", "fetalkit.cli", "batch", "mask", str(arch), "--out", str(out), "-q"]
    journal = out / ".batch" / "journal.jsonl"

    # Ctrl-C: finished inputs are kept, the manifest says what was not reached, exit 130
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    _wait_for_journal_lines(journal, 1, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130 and "rerun the same command" in proc.stderr.read()
    statuses = [r["status"] for r in read_csv(out / "manifest.csv").values()]
    assert set(statuses) <= {"done", "pending"} and "pending" in statuses
    assert statuses.count("done") == len(read_journal(journal))

    # SIGKILL mid-file: no cleanup runs at all
    proc = subprocess.Popen(cmd + ["--workers", "2"], stderr=subprocess.PIPE, text=True)
    _wait_for_journal_lines(journal, statuses.count("done") + 2, proc)
    proc.kill()
    proc.wait(60)
    for clip in out.glob("*.avi"):  # every file under its final name is whole
        cap = cv2.VideoCapture(str(clip))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES, clip
        cap.release()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp_")]

    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    final = read_csv(out / "manifest.csv")
    assert [r["status"] for r in final.values()] == ["done"] * 8
    assert len(list(out.glob("*.avi"))) == 8 and not (out / ".batch" / "partial").exists()


def test_ray_runs_the_same_batch(archive, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fetalkit[cluster]')")
    run_batch("biometry-head", archive, tmp_path / "local", workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = run_batch("biometry-head", archive, tmp_path / "ray", ray_address="local")
    finally:
        ray.shutdown()
    assert (s.done, s.failed, s.ignored) == (5, 3, 3)
    assert read_csv(tmp_path / "ray" / "results.csv") == read_csv(tmp_path / "local" / "results.csv")


def test_cli_prints_the_summary_and_names_failing_files(archive, tmp_path):
    res = fetalkit("batch", "biometry-head", archive, "--out", tmp_path / "out", "--pixel-mm", "0.2")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "5 done" in res.stdout and "3 failed" in res.stdout and "3 ignored" in res.stdout
    assert "corrupt.png" in res.stderr and "cine.dcm" in res.stderr
    assert read_csv(tmp_path / "out" / "results.csv")["heads/h0.png"]["pixel_mm"] == "0.200000"
    bad = fetalkit("batch", "nope", archive, "--out", tmp_path / "o2")
    assert bad.returncode == 1 and "unknown batch job 'nope'" in bad.stderr


def test_cli_ray_local_starts_and_stops_its_own_ray(archive, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'fetalkit[cluster]')")
    res = fetalkit("batch", "biometry-head", archive / "heads", "--out", tmp_path / "out", "--ray", "local",
                   "--workers", "2", "-q")
    assert res.returncode == 1 and "corrupt.png" in res.stderr and "Traceback" not in res.stderr
    assert len(read_csv(tmp_path / "out" / "results.csv")) == 3


def test_one_file_is_an_archive_of_one(archive, tmp_path):
    s = run_batch("biometry-head", archive / "heads" / "h0.png", tmp_path / "out", BatchOptions(overlays=False))
    assert (s.done, s.failed) == (1, 0) and list(read_csv(tmp_path / "out" / "results.csv")) == ["h0.png"]
