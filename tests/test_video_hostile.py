"""Streams under hostile input: damaged and cut videos, names that are not UTF-8, outputs pointed at
the inputs, declared sizes, unreadable frame files; nothing lost or overwritten in silence."""

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fetalkit.errors import InputError
from fetalkit.io.video import open_source
from fetalkit.masking.pipeline import MaskConfig, Masker, run_stream
from fetalkit.types import ImageDetections

SIZE = (96, 128)


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


class NoDetections:
    classes = ["pubic_symphysis", "fetal_head"]

    def detect(self, gray, conf=None, iou=None):
        return ImageDetections.empty()


def frame(i: int) -> np.ndarray:
    """Speckle with the frame's index written in its top-left block (read back after MJPEG: +-2)."""
    f = np.random.default_rng(i).integers(40, 200, SIZE, dtype=np.uint8)
    f[:16, :16] = 4 * i
    return f


def index_of(f: np.ndarray) -> int:
    g = f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
    return int(round(float(g[4:12, 4:12].mean()) / 4))


def make_clip(path, n=40):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (SIZE[1], SIZE[0]), isColor=False)
    for i in range(n):
        w.write(frame(i))
    w.release()
    return path


def damage_frame(path, k):
    """Overwrite the k-th JPEG frame after its SOI marker with garbage (the AVI index stays intact)."""
    data = bytearray(path.read_bytes())
    starts = [m.start() for m in re.finditer(b"\xff\xd8\xff", bytes(data))]
    data[starts[k] + 2: starts[k] + 802] = np.random.default_rng(1).integers(0, 256, 800, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def decoded(path):
    """Every frame OpenCV decodes from a file (an ASCII name: cv2 crashes on others)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(f)


def tmp_files(folder):
    return [p for p in folder.rglob(".tmp_*")]


# --------------------------------------------------------------------------- damaged and cut videos


def test_source_skips_an_undecodable_frame_and_goes_on(tmp_path):
    src = open_source(str(damage_frame(make_clip(tmp_path / "clip.avi"), 20)))
    got = [(i, index_of(f)) for i, f in src]
    assert [i for i, _ in got] == [i for i in range(40) if i != 20]
    assert all(i == k for i, k in got)                                    # every frame keeps its own index
    assert src.lost == [20] and src.missing() == [20] and src.read == 39


def test_mask_writes_a_damaged_frame_black_and_keeps_the_frames_after_it(tmp_path):
    clip = damage_frame(make_clip(tmp_path / "clip.avi"), 20)
    report = run_stream(open_source(str(clip)), tmp_path / "out.avi", Masker(NoDetections(), MaskConfig()),
                        tmp_path / "log.jsonl")
    assert report.error is None and report.frames == 40 and report.lost == [20]
    out = decoded(tmp_path / "out.avi")
    assert len(out) == 40
    assert out[20].max() == 0                                             # black, never an unmasked guess
    assert [index_of(f) for f in out[21:]] == list(range(21, 40))         # the frames after it, all there
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(40))
    assert records[20]["lost"] and records[20]["fail_safe"] and not records[21].get("lost")
    assert report.problems("clip.avi", "out.avi")[0] is None and "frame 20" in report.problems("clip.avi", "out.avi")[1]


def test_mask_cli_damaged_frame_warns_without_ffmpeg_noise(tmp_path):
    clip = damage_frame(make_clip(tmp_path / "clip.avi"), 20)
    res = fetalkit("mask", clip, "-o", tmp_path / "out.avi")
    assert res.returncode == 0, res.stderr
    assert "clip.avi: frame 20 could not be decoded" in res.stderr
    assert "[mjpeg" not in res.stderr and "Traceback" not in res.stderr
    assert len(decoded(tmp_path / "out.avi")) == 40


@pytest.mark.parametrize("command", ["mask", "deid"])
def test_cut_video_is_reported_and_exits_nonzero(tmp_path, command):
    data = make_clip(tmp_path / "full.avi").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])                          # the header still announces 40
    res = fetalkit(command, cut, "-o", tmp_path / "out.avi")
    assert res.returncode == 1, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr                                    # one line, no [mjpeg @ ...] beside it
    m = re.search(r"cut\.avi: (\d+) of 40 frames could not be decoded \(cut short or damaged; frames (\d+)-39\); "
                  r"the (\d+) readable frames are in .*out\.avi", lines[0])
    assert m, lines[0]
    lost, first_lost, readable = map(int, m.groups())
    assert lost + readable == 40 and first_lost == readable and 0 < readable < 40
    assert len(decoded(tmp_path / "out.avi")) == readable                 # the output written is complete
    assert not tmp_files(tmp_path)


def test_deid_cli_damaged_frame_is_skipped_and_reported(tmp_path):
    clip = damage_frame(make_clip(tmp_path / "clip.avi"), 20)
    res = fetalkit("deid", clip, "-o", tmp_path / "anon.avi", "--no-clean")
    assert res.returncode == 1
    assert "clip.avi: 1 of 40 frames could not be decoded (cut short or damaged; frame 20); the 39 readable " \
           "frames are in" in res.stderr and "[mjpeg" not in res.stderr
    out = decoded(tmp_path / "anon.avi")
    assert [index_of(f) for f in out] == [i for i in range(40) if i != 20]


def test_declared_frame_size_is_checked_before_any_frame_is_decoded(tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "clip.avi", n=3)
    monkeypatch.setenv("FETALKIT_MAX_PIXELS", "10000")                   # a 128 x 96 frame is 12288 px
    with pytest.raises(InputError, match=r"clip\.avi: declares 128 x 96 pixels"):
        open_source(str(clip))


# --------------------------------------------------------------------------- outputs never replace inputs


def test_mask_refuses_outputs_that_are_inputs(tmp_path):
    clip = make_clip(tmp_path / "clip.avi", n=3)
    (tmp_path / "frames").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "frames" / f"{i}.png"), frame(i))
    (tmp_path / "link.avi").symlink_to(clip)
    (tmp_path / "frames_link").symlink_to(tmp_path / "frames")
    before = {p: p.read_bytes() for p in [clip, *(tmp_path / "frames").iterdir()]}
    for args in ([clip, "-o", clip], [clip, "-o", tmp_path / "link.avi"],
                 [tmp_path / "frames", "-o", tmp_path / "frames"],
                 [tmp_path / "frames", "-o", tmp_path / "frames_link"],
                 [tmp_path / "frames" / "0.png", "-o", tmp_path / "frames" / "0.png"],
                 [clip, "-o", tmp_path / "o.avi", "--log", clip]):
        res = fetalkit("mask", *args)
        assert res.returncode == 1 and "overwrite an input" in res.stderr, (args, res.stderr)
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "o.avi").exists() and not tmp_files(tmp_path)


def test_deid_refuses_an_output_linked_to_the_input(tmp_path):
    clip = make_clip(tmp_path / "clip.avi", n=3)
    (tmp_path / "link.avi").symlink_to(clip)
    before = clip.read_bytes()
    res = fetalkit("deid", clip, "-o", tmp_path / "link.avi")
    assert res.returncode == 1 and "overwrite" in res.stderr
    assert clip.read_bytes() == before and (tmp_path / "link.avi").is_symlink()


# --------------------------------------------------------------------------- names that are not UTF-8


def test_names_that_are_not_utf8(tmp_path):
    """cv2.imread / VideoCapture / VideoWriter crash (SIGSEGV) on such names; mask and deid go through."""
    links_before = _link_folders()
    base = os.fsencode(tmp_path)
    frames = tmp_path / os.fsdecode(b"fr\xe9")
    frames.mkdir()
    colour = np.dstack([frame(0), frame(1), frame(2)])
    for name in (b"0.png", b"1\xe9.png"):
        cv2.imencode(".png", colour)[1].tofile(os.fsdecode(base + b"/fr\xe9/" + name))
    out = tmp_path / os.fsdecode(b"out\xe9")
    res = fetalkit("mask", frames, "-o", out)
    assert res.returncode == 0, res.stderr
    assert "out\\xe9" in res.stdout                                      # printable names in messages
    written = sorted(os.listdir(os.fsencode(out)))
    assert written == [b"0.png", b"1\xe9.png"]
    kept = cv2.imdecode(np.fromfile(os.fsdecode(os.fsencode(out) + b"/0.png"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert kept.ndim == 3                                                 # colour kept

    clip = tmp_path / os.fsdecode(b"clip\xe9.avi")
    make_clip(tmp_path / "ascii.avi", n=5).rename(clip)
    for command, target in (("mask", b"m\xe9.avi"), ("deid", b"d\xe9.mp4")):
        res = fetalkit(command, clip, "-o", tmp_path / os.fsdecode(target))
        assert res.returncode == 0, res.stderr
        copy = tmp_path / f"check_{command}{os.path.splitext(os.fsdecode(target))[1]}"
        copy.write_bytes((tmp_path / os.fsdecode(target)).read_bytes())
        assert len(decoded(copy)) == 5
    assert _link_folders() == links_before                               # the temporary links are gone
    res = fetalkit("deid", clip, "-o", tmp_path / "x.png")
    assert res.returncode == 1 and "x.png: output of a video must be a video file" in res.stderr


def _link_folders():
    import tempfile
    return sorted(p for p in os.listdir(tempfile.gettempdir()) if p.startswith("fetalkit-"))


# --------------------------------------------------------------------------- folders of frames


def test_unreadable_frame_file_is_written_black_under_its_name(tmp_path):
    (tmp_path / "in").mkdir()
    for i in (0, 2):
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), frame(i))
    (tmp_path / "in" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    report = run_stream(open_source(str(tmp_path / "in")), tmp_path / "out", Masker(NoDetections(), MaskConfig()))
    assert report.lost == [1] and report.error is None and report.frames == 3
    assert cv2.imread(str(tmp_path / "out" / "1.png"), cv2.IMREAD_UNCHANGED).max() == 0
    error, warning = report.problems(tmp_path / "in", tmp_path / "out")
    assert error is None and "1.png: not a readable image" in warning and "written black" in warning


def test_folder_with_a_subfolder_named_like_a_frame_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "0.png"), frame(0))
    (tmp_path / "in" / "1.png").mkdir()
    with pytest.raises(InputError, match=r"1\.png: a folder, not a file"):
        open_source(str(tmp_path / "in"))
