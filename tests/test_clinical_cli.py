"""`fetalkit sector`, `clean`, `deid` and `data dedup` on generated files: good and bad inputs."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fetalkit.io.images import read_gray, write_image
from fetalkit.preprocess.text import draw_synthetic_overlays
from fetalkit.synth.hostile import bomb_png
from fetalkit.synth.phantom import head_phantom


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    p = head_phantom(seed=3)
    over = draw_synthetic_overlays(p.image, p.sector, seed=0)
    write_image(folder / "scan.png", over.image)
    write_image(folder / "blank.png", np.zeros((300, 400), np.uint8))
    return folder, p, over


def test_sector_cli_finds_the_fan_and_reports_blank(frames, tmp_path):
    folder, p, _ = frames
    res = fetalkit("sector", folder, "--out", tmp_path)
    assert res.returncode == 1 and "blank.png" in res.stderr and "Traceback" not in res.stderr
    mask = read_gray(tmp_path / "scan_sector.png") > 0
    iou = (mask & (p.sector > 0)).sum() / (mask | (p.sector > 0)).sum()
    assert iou > 0.97
    assert json.loads((tmp_path / "sectors.json").read_text())[str(folder / "scan.png")]["kind"] == "fan"


def test_clean_cli_removes_pasted_overlays(frames, tmp_path):
    folder, p, over = frames
    fetalkit("clean", folder / "scan.png", "--out", tmp_path)
    cleaned = read_gray(tmp_path / "scan.png")
    removed = read_gray(tmp_path / "scan_removed.png") > 0
    truth = over.overlay_mask > 0
    assert removed[truth].mean() >= 0.9  # recall of pasted overlay pixels
    # the frame changed only around the overlays
    changed = np.abs(cleaned.astype(int) - over.image.astype(int)) > 2
    assert changed[~truth & (p.sector > 0)].mean() < 0.01


def test_dedup_cli_exact_and_near(tmp_path):
    a = head_phantom(seed=1).image
    write_image(tmp_path / "a.png", a)
    shutil.copy(tmp_path / "a.png", tmp_path / "a_copy.png")
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    write_image(tmp_path / "a_noisy.png", noisy)
    write_image(tmp_path / "other.png", head_phantom(seed=2).image)
    res = fetalkit("data", "dedup", tmp_path, "--out", tmp_path / "pairs.csv")
    assert res.returncode == 0
    rows = list(csv.DictReader(open(tmp_path / "pairs.csv")))
    kinds = {(Path(r["file_a"]).name, Path(r["file_b"]).name): r["kind"] for r in rows}
    assert kinds[("a.png", "a_copy.png")] == "exact"
    assert kinds.get(("a.png", "a_noisy.png")) == "near" or kinds.get(("a_copy.png", "a_noisy.png")) == "near"
    assert not any("other.png" in pair for pair in kinds)


def test_deid_image_and_bad_inputs(frames, tmp_path):
    folder, _, over = frames
    res = fetalkit("deid", folder / "scan.png", "-o", tmp_path / "anon.png", "--json")
    assert res.returncode == 0
    assert json.loads(res.stdout)["pixels_cleaned"] is True
    assert read_gray(tmp_path / "anon.png").shape == over.image.shape
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\x89PNG not dicom at all")
    res = fetalkit("deid", fake, "-o", tmp_path / "out.dcm")
    assert res.returncode == 1 and "fake.dcm" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out.dcm").exists()
    res = fetalkit("deid", folder / "scan.png", "-o", folder / "scan.png")
    assert res.returncode == 1 and "overwrite" in res.stderr


def test_deid_dicom_cli(tmp_path):
    pytest.importorskip("pydicom")
    from fetalkit.io.dicom import read_dicom, write_dicom
    from pydicom.dataset import Dataset
    tmpl = Dataset()
    tmpl.PatientName = "Doe^Jane"
    tmpl.PatientID = "ID-12345"
    frames = np.stack([head_phantom(seed=s).image for s in (4, 5)])
    src = write_dicom(tmp_path / "cine.dcm", frames, tmpl, fps=20.0)
    before = src.read_bytes()
    res = fetalkit("deid", src, "-o", tmp_path / "anon.dcm", "--json")
    assert res.returncode == 0, res.stderr
    out = (tmp_path / "anon.dcm").read_bytes()
    assert b"Doe^Jane" not in out and b"ID-12345" not in out
    assert read_dicom(tmp_path / "anon.dcm").frames.shape == frames.shape
    assert src.read_bytes() == before


def test_deid_video_cleans_every_frame(tmp_path):
    import cv2
    from fetalkit.io.video import VideoSink, open_source
    clean_frames, over = [], []
    for seed in range(4):
        p = head_phantom(seed=seed)
        o = draw_synthetic_overlays(p.image, p.sector, seed=seed)
        clean_frames.append(p.image)
        over.append(o)
    src = tmp_path / "cine.avi"
    sink = VideoSink(src, 10.0, clean_frames[0].shape, is_color=False)
    for o in over:
        sink.write(o.image)
    sink.close()
    before = src.read_bytes()
    res = fetalkit("deid", src, "-o", tmp_path / "anon.avi", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["kind"] == "video" and report["frames"] == 4 and report["overlay_px_removed"] > 0
    assert src.read_bytes() == before
    stored = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for _, f in open_source(str(src))]
    anon = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for _, f in open_source(str(tmp_path / "anon.avi"))]
    assert len(anon) == 4
    for o, clean, s, a in zip(over, clean_frames, stored, anon):
        text = o.overlay_mask > 0
        # in the overlay pixels the output is much closer to the frame without overlays than the input was
        err_in = np.abs(s[text].astype(int) - clean[text]).mean()
        err_out = np.abs(a[text].astype(int) - clean[text]).mean()
        assert err_out < 0.5 * err_in
    res = fetalkit("deid", src, "-o", tmp_path / "anon.png")
    assert res.returncode == 1 and "anon.png" in res.stderr and "video file" in res.stderr
    assert not (tmp_path / "anon.png").exists()


def test_deid_refuses_a_png_declaring_a_huge_size_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(30000, 30000))
    res = fetalkit("deid", bomb, "-o", tmp_path / "anon.png")
    assert res.returncode == 1 and "bomb.png: declares" in res.stderr and "FETALKIT_MAX_PIXELS" in res.stderr
    assert "libpng" not in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "anon.png").exists()


def test_deid_folder_input_and_folder_output(frames, tmp_path):
    folder, _, _ = frames
    res = fetalkit("deid", folder, "-o", tmp_path / "anon.png")
    assert res.returncode == 1 and "is a folder" in res.stderr and "fetalkit batch deid" in res.stderr
    assert "Traceback" not in res.stderr
    (tmp_path / "out").mkdir()
    res = fetalkit("deid", folder / "scan.png", "-o", tmp_path / "out")   # an existing folder: written into it
    assert res.returncode == 0, res.stderr
    assert read_gray(tmp_path / "out" / "scan.png").shape == read_gray(folder / "scan.png").shape
    assert str(tmp_path / "out" / "scan.png") in res.stdout.replace("\n", "")


def test_deid_cine_without_frame_timing_says_the_rate_written(tmp_path):
    pytest.importorskip("pydicom")
    from fetalkit.io.dicom import read_dicom, write_dicom
    from fetalkit.synth.hostile import drop_frame_timing
    src = write_dicom(tmp_path / "untimed.dcm", np.stack([head_phantom(seed=s).image for s in (4, 5)]), fps=20.0)
    drop_frame_timing(src)
    res = fetalkit("deid", src, "-o", tmp_path / "anon.dcm", "--json")
    assert res.returncode == 0, res.stderr
    assert "no frame timing in" in res.stderr and "untimed.dcm: written at 25 frames/s" in res.stderr
    assert json.loads(res.stdout)["fps_assumed"] == 25.0                 # stdout stays JSON
    assert read_dicom(tmp_path / "anon.dcm").fps == pytest.approx(25.0)
