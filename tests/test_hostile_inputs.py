"""The input rules under hostile input: odd names, unreadable entries, bombs, outputs aimed at inputs.

Every case here failed on main before the shared input layer (fetalkit.io.inputs):
a traceback, a crash, a silently skipped entry, or an input overwritten.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetalkit.errors import InputError
from fetalkit.io.images import read_gray
from fetalkit.io.inputs import check_pixels, decode_image, list_inputs, printable
from fetalkit.io.jobs import plan_stems, process_files
from fetalkit.synth.hostile import bomb_png
from fetalkit.synth.phantom import write_phantom_folder

LATIN1_NAME = b"caf\xe9.png"  # an old archive's Latin-1 name: not UTF-8


@pytest.fixture(scope="module")
def bomb_bytes():
    return bomb_png()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, bomb_bytes):
    """A folder as an archive holds it: two good scans, one with a Latin-1 name, and every kind of bad entry."""
    ph = tmp_path_factory.mktemp("ph")
    write_phantom_folder(ph, n=2, seed=3)
    folder = tmp_path_factory.mktemp("hostile")
    shutil.copy(ph / "phantom_00.png", folder / "phantom_00.png")
    shutil.copy(ph / "phantom_01.png", os.path.join(os.fsencode(folder), LATIN1_NAME))
    (folder / "bomb.png").write_bytes(bomb_bytes)
    (folder / "cut.png").write_bytes((ph / "phantom_01.png").read_bytes()[:400])
    (folder / "text.png").write_text("not an image")
    cv2.imwrite(str(folder / "tiny.png"), np.full((1, 1), 90, np.uint8))
    os.mkfifo(folder / "pipe.png")
    (folder / "folder.png").mkdir()
    os.symlink("nowhere.png", folder / "dangling.png")
    return folder


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(os.fsdecode, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, encoding="utf-8") as f:
        return {Path(r["filename"]).name: r for r in csv.DictReader(f)}


EXPECTED_BAD = {"bomb.png", "cut.png", "text.png", "tiny.png", "pipe.png", "folder.png", "dangling.png"}


@pytest.mark.parametrize("command, csv_name", [
    (["biometry", "head", "--pixel-mm", "0.1"], "measurements.csv"),
    (["classify"], "classes.csv"),
    (["clean"], "cleaning.csv"),
    (["detect"], None),
    (["sector"], "sectors.csv"),
])
def test_every_entry_gets_one_line_and_the_rest_is_processed(hostile, tmp_path, command, csv_name):
    out = tmp_path / "out"
    r = run_cli(*command, hostile, "--out", out)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    for name in EXPECTED_BAD:
        assert sum(name in line for line in error_lines) == 1, (name, r.stderr)
    # no stray lines of the C libraries (libpng error: ..., [mjpeg @ ...]) beside fetalkit's own
    assert not [line for line in r.stderr.splitlines() if "libpng" in line or line.startswith("[")], r.stderr
    if csv_name:
        rows = read_csv(out / csv_name)
        assert set(rows) == EXPECTED_BAD | {"phantom_00.png", "caf\\xe9.png"}
        assert rows["caf\\xe9.png"]["error"] == "" and rows["phantom_00.png"]["error"] == ""
        assert all(rows[n]["error"] for n in EXPECTED_BAD)
        assert "30000 x 30000" in rows["bomb.png"]["error"] or "far above the limit" in rows["bomb.png"]["error"]


def test_detect_names_a_latin1_file_so_it_can_be_found_again(hostile, tmp_path):
    import json
    run_cli("detect", hostile, "--out", tmp_path)
    names = {d["file_name"] for d in json.loads((tmp_path / "detections.json").read_text(encoding="utf-8"))}
    escaped = [n for n in names if "caf" in n]
    assert escaped, names  # the phantom head is detected in the Latin-1-named copy too
    for n in escaped:
        # the escape decodes back to the bytes on disk
        raw = n.encode("utf-8").decode("unicode_escape").encode("latin-1")
        assert os.path.exists(raw) and raw.endswith(LATIN1_NAME)


def test_printable_keeps_utf8_and_escapes_other_bytes():
    assert printable("échographie.png") == "échographie.png"
    assert printable(os.fsdecode(LATIN1_NAME)) == "caf\\xe9.png"
    assert printable(Path(os.fsdecode(b"a/\xff\xfe.dcm"))) == "a/\\xff\\xfe.dcm"


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=40))
def test_any_file_name_is_printable(raw):
    name = printable(os.fsdecode(raw))
    name.encode("utf-8")  # never raises: it can go into csv, json and a terminal
    if _is_utf8(raw):
        assert name == raw.decode("utf-8")
    else:
        assert "\\x" in name


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000))
def test_any_bytes_are_an_image_or_one_input_error(tmp_path, data):
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    try:
        image = read_gray(path)
    except InputError as e:
        assert "fuzz.png" in str(e) and "\n" not in str(e)
    else:
        assert image.dtype == np.uint8 and image.ndim == 2


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.integers(0, 3))
def test_damaged_png_is_refused_in_one_line(w, h, cut):
    ok, buf = cv2.imencode(".png", np.random.default_rng(w * h).integers(0, 255, (h, w), dtype=np.uint8))
    data = buf.tobytes()
    data = data[: len(data) * cut // 4] if cut else data
    try:
        image = decode_image(data, "x.png")
    except InputError as e:
        assert str(e).startswith("x.png: ")
    else:
        assert cut == 0 and image.shape == (h, w)


def test_declared_size_is_checked_before_decoding(bomb_bytes, monkeypatch):
    with pytest.raises(InputError, match="bomb.png: declares"):
        decode_image(bomb_bytes, "bomb.png")
    with pytest.raises(InputError, match="above the limit of 10 Mpx"):
        check_pixels("big.png", 4000, 4000)
    monkeypatch.setenv("FETALKIT_MAX_PIXELS", "20000000")
    check_pixels("big.png", 4000, 4000)  # raised limit: accepted
    with pytest.raises(InputError, match="FETALKIT_MAX_DECODED_MB"):
        check_pixels("cine.dcm", 600, 800, frames=2000, bytes_per_pixel=3)


def test_bomb_runs_stay_under_the_memory_target(tmp_path, bomb_bytes):
    """Peak memory of whole command runs on a 0.9 MB PNG declaring 30000 x 30000 (it took 6-16 GB before)."""
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(bomb_bytes)
    probe = ("import resource, subprocess, sys; "
             "r = subprocess.run(sys.argv[1:], capture_output=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    for command in (["clean", tmp_path, "--out", tmp_path / "c"], ["deid", tmp_path / "a.png", "-o", tmp_path / "d.png"],
                    ["biometry", "head", tmp_path, "--out", tmp_path / "h"]):
        r = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "fetalkit.cli", *map(str, command)],
                           capture_output=True, text=True, timeout=300)
        code, peak_kb = map(int, r.stdout.split())
        assert code == 1, (command, r.stderr)
        assert peak_kb < 1.5 * 1024 * 1024, (command, peak_kb)


def test_fifo_folder_and_dangling_link_are_reported_not_skipped(hostile):
    paths, skipped = list_inputs([hostile])
    reasons = {p.name: str(e) for p, e in skipped}
    assert set(reasons) == {"pipe.png", "folder.png", "dangling.png"}
    assert "FIFO" in reasons["pipe.png"] and "folder" in reasons["folder.png"] and "dangling" in reasons["dangling.png"]
    assert os.fsdecode(LATIN1_NAME) in {p.name for p in paths}


def test_os_errors_become_rows_and_the_job_goes_on(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]

    def measure(path, row, write):
        if path.name == "a.png":
            raise PermissionError(13, "Permission denied", str(path))
        if path.name == "b.png":
            raise ValueError("a bug")
        row["value"] = "1"
    rows = process_files(paths, ["filename", "value", "error"], measure)
    assert [r["value"] for r in rows] == ["", "", "1"]
    assert rows[0]["error"].endswith("a.png: permission denied; give fetalkit read permission (or leave the file out)")
    assert "unexpected error (ValueError: a bug)" in rows[1]["error"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_file_is_one_row(tmp_path):
    write_phantom_folder(tmp_path / "in", n=2, seed=1)
    locked = tmp_path / "in" / "phantom_00.png"
    locked.chmod(0)
    try:
        r = run_cli("classify", tmp_path / "in", "--out", tmp_path / "out")
    finally:
        locked.chmod(0o644)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    rows = read_csv(tmp_path / "out" / "classes.csv")
    assert "permission denied" in rows["phantom_00.png"]["error"] and rows["phantom_01.png"]["error"] == ""


def test_outputs_never_replace_inputs(tmp_path):
    folder = tmp_path / "scans"
    write_phantom_folder(folder, n=2, seed=2)
    shutil.copy(folder / "phantom_01.png", folder / "phantom_00_removed.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    r = run_cli("clean", folder, "--out", folder)
    assert r.returncode == 1 and "would overwrite an input" in r.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before
    # two inputs that would share an output: both kept, under distinct names
    r = run_cli("clean", folder / "phantom_00.png", folder / "phantom_00_removed.png", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "o").glob("*.png"))) == 4


@given(st.lists(st.sampled_from(["a.png", "a_removed.png", "a_.png", "b.png", "a_removed_.png", "x/a.png",
                                 "y/a.png", "x/a_removed.png"]), min_size=1, max_size=8, unique=True))
@settings(max_examples=60, deadline=None)
def test_planned_outputs_are_unique_and_never_an_input(names):
    root = Path("/nonexistent-root")
    paths = [root / n for n in names]
    out = root / "x"
    stems, refused = plan_stems(paths, out, lambda s: [f"{s}.png", f"{s}_removed.png"], summary=["cleaning.csv"])
    outputs = [out / n for p in stems for n in (f"{stems[p]}.png", f"{stems[p]}_removed.png")]
    assert len(outputs) == len(set(outputs))
    assert not set(outputs) & set(paths)
    assert set(stems) | set(refused) == set(paths)
    if refused:  # only an input inside the output folder can be in the way
        assert any(p.parent == out for p in paths)


def test_out_that_is_a_file_is_one_line(tmp_path):
    write_phantom_folder(tmp_path / "in", n=1, seed=4)
    target = tmp_path / "in" / "phantom_00.png"
    before = target.read_bytes()
    r = run_cli("biometry", "head", tmp_path / "in", "--out", target)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "exists and is not a folder" in r.stderr and target.read_bytes() == before


def test_dicom_is_read_wherever_images_are(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    path = get_testdata_file("examples_palette.dcm")
    shutil.copy(path, tmp_path / "us.dcm")
    for command in (["detect"], ["clean"], ["sector"]):
        r = run_cli(*command, tmp_path / "us.dcm", "--out", tmp_path / command[0])
        assert "not a readable image" not in r.stderr, (command, r.stderr)
        assert r.returncode == 0, (command, r.stderr)
    assert pydicom
