"""`fetalkit biometry head` on phantom images: good inputs measured, bad inputs reported, run continues."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fetalkit.biometry.head_job import COLUMNS, measure_files
from fetalkit.io.images import write_image
from fetalkit.synth.phantom import write_phantom_folder


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    csv_path = write_phantom_folder(folder, n=4, seed=11)
    return folder, csv_path


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_measures_phantoms_close_to_truth(phantoms, tmp_path):
    folder, csv_path = phantoms
    rows = measure_files([folder], tmp_path, pixel_csv=csv_path)
    truth = {r["filename"]: float(r["head circumference (mm)"]) for r in read_rows(csv_path)}
    assert len(rows) == 4
    assert list(read_rows(tmp_path / "measurements.csv")[0]) == COLUMNS
    for r in rows:
        assert r["error"] == ""
        hc_true = truth[Path(r["filename"]).name]
        assert float(r["hc_mm"]) == pytest.approx(hc_true, rel=0.05)
        assert float(r["bpd_mm"]) < float(r["ofd_mm"])
        assert (tmp_path / f"{Path(r['filename']).stem}_overlay.png").is_file()


def test_without_pixel_size_reports_pixels(phantoms, tmp_path):
    folder, _ = phantoms
    rows = measure_files([sorted(folder.glob("*.png"))[0]], tmp_path, overlays=False)
    assert rows[0]["units"] == "px" and rows[0]["hc_mm"] == "" and float(rows[0]["hc_px"]) > 100


def test_bad_inputs_get_error_rows_and_the_rest_is_measured(phantoms, tmp_path):
    folder, csv_path = phantoms
    good = sorted(folder.glob("*.png"))[0]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "notes.png").write_text("this is not an image")
    write_image(bad_dir / "flat.png", np.full((540, 800), 7, np.uint8))
    write_image(bad_dir / "dark_noise.png", np.random.default_rng(0).integers(0, 3, (540, 800)).astype(np.uint8))
    write_image(bad_dir / "noise.png", np.random.default_rng(0).integers(0, 256, (540, 800)).astype(np.uint8))
    before = good.read_bytes()
    res = fetalkit("biometry", "head", good, bad_dir / "notes.png", bad_dir / "flat.png",
                   bad_dir / "missing.png", bad_dir / "dark_noise.png", bad_dir / "noise.png", "--pixel-mm", "0.12", "--out", tmp_path / "o")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    rows = {Path(r["filename"]).name: r for r in read_rows(tmp_path / "o" / "measurements.csv")}
    assert rows[good.name]["error"] == "" and float(rows[good.name]["hc_mm"]) > 0
    assert "not a readable image" in rows["notes.png"]["error"]
    assert "constant" in rows["flat.png"]["error"]
    assert "not found" in rows["missing.png"]["error"]
    assert "almost no contrast" in rows["dark_noise.png"]["error"]
    assert "not a fetal head plane" in rows["noise.png"]["error"] and rows["noise.png"]["plane_ok"] == "false"
    assert good.read_bytes() == before  # inputs never modified
    forced = fetalkit("biometry", "head", bad_dir / "noise.png", "--pixel-mm", "0.12", "--force", "--out", tmp_path / "f")
    assert forced.returncode == 1 and "no head found" in forced.stderr and "Traceback" not in forced.stderr


def test_bad_pixel_sizes(phantoms, tmp_path):
    folder, _ = phantoms
    good = sorted(folder.glob("*.png"))[0]
    res = fetalkit("biometry", "head", good, "--pixel-mm", "-1", "--out", tmp_path / "neg")
    assert res.returncode == 1 and "positive" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "neg" / "measurements.csv").exists()
    px = tmp_path / "px.csv"
    px.write_text("filename,pixel size(mm)\nother.png,0.1\n")
    res = fetalkit("biometry", "head", good, "--pixel-csv", px, "--out", tmp_path / "csv")
    assert res.returncode == 1
    row = read_rows(tmp_path / "csv" / "measurements.csv")[0]
    assert "no row for" in row["error"]


def test_models_lists_the_bundled_head_model():
    res = fetalkit("models", "--json")
    assert res.returncode == 0
    assert "head-seg" in res.stdout and "head-unet-mnv2" in res.stdout
