"""`fetalkit batch mask|deid --audit`: every output audited; one that leaks is never published."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from fetalkit.batch import BatchOptions, run_batch
from fetalkit.demo import phantom_clip


def read_rows(path):
    with open(path, encoding="utf-8") as f:
        return {r["input"]: r for r in csv.DictReader(f)}


@pytest.fixture
def archive(tmp_path):
    src = tmp_path / "archive"
    src.mkdir()
    phantom_clip(src / "clip.avi", n_frames=24)
    return src


def test_mask_audit_writes_a_clean_verdict_beside_the_output(archive, tmp_path):
    out = tmp_path / "out"
    summary = run_batch("mask", archive, out, BatchOptions(audit=True))
    assert summary.failed == 0 and summary.done == 1
    report = json.loads((out / "clip.avi.audit.json").read_text())
    assert report["clean"] is True and report["frames_compared"] == 24
    assert report["masked"] == "clip.avi"  # the published name, not the staging folder's
    assert read_rows(out / "results.csv")["clip.avi"]["audit"] == "clean"


def test_an_output_whose_audit_leaks_is_not_published(archive, tmp_path, monkeypatch):
    from fetalkit.audit import mask as audit_mask_module
    real = audit_mask_module.audit_mask

    def leaking(*args, **kwargs):
        audit = real(*args, **kwargs)
        audit.leaked_frames = [3, 4, 5]  # as if the mask had let frames 3-5 through
        audit.longest_leaked_run = 3
        return audit
    monkeypatch.setattr(audit_mask_module, "audit_mask", leaking)
    out = tmp_path / "out"
    summary = run_batch("mask", archive, out, BatchOptions(audit=True))
    assert summary.failed == 1 and summary.done == 0
    assert not (out / "clip.avi").exists() and not (out / "clip.avi.audit.json").exists()
    error = read_rows(out / "manifest.csv")["clip.avi"]["error"]
    assert "not published" in error and "3 of 24 frames leaked" in error


def test_deid_audit_on_a_real_ultrasound_dicom(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    src = tmp_path / "archive"
    src.mkdir()
    shutil.copy(get_testdata_file("examples_palette.dcm"), src / "us.dcm")
    out = tmp_path / "out"
    summary = run_batch("deid", src, out, BatchOptions(audit=True))
    assert summary.failed == 0, [e.error for e in summary.failures]
    report = json.loads((out / "us.dcm.audit.json").read_text())
    assert report["clean"] is True and report["required_actions_share"] == 1.0
    assert read_rows(out / "results.csv")["us.dcm"]["audit"] == "clean"


def test_audit_is_part_of_the_folders_options(archive, tmp_path):
    out = tmp_path / "out"
    run_batch("mask", archive, out, BatchOptions(audit=True))
    from fetalkit.errors import FetalkitError
    with pytest.raises(FetalkitError, match="audit"):
        run_batch("mask", archive, out, BatchOptions())  # a rerun without --audit may not publish unaudited files
