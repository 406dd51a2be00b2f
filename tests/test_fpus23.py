"""FPUS23 frame labels for the view classifier: the real XMLs (with stand-in frames) and the
synthetic FPUS23-style folder of fetalkit.synth.cvat."""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from fetalkit.datasets.fpus23 import FPUS23_TASKS, fpus23_view_items
from fetalkit.datasets.views import read_view_image, split_view_items
from fetalkit.errors import DataError
from fetalkit.synth.cvat import TRUTH_FILE, write_phantom_cvat
from tests.conftest import need_dataset

ABD_H, ARMS_H, ARMS_V = "stream_hdvb_aroundabd_h", "stream_hdvb_aroundarms_h", "stream_hdvb_aroundarms_v"


def _frame_names(xml: Path) -> list[str]:
    """The image names an XML lists, read as text (independent of the reader under test)."""
    return re.findall(r'<image id="\d+" name="([^"]+)"', xml.read_text())


def _stand_in_frames(xml: Path, folder: Path) -> int:
    """An empty file per frame of ``xml`` in ``folder`` (the reader only needs them to exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = _frame_names(xml)
    for name in names:
        (folder / name).touch()
    return len(names)


def _by_stream(items) -> Counter:
    return Counter((it.group, it.label) for it in items)


# --------------------------------------------------------------------------- real XMLs

def test_real_streams_labels_per_task_beside_the_xmls(tmp_path):
    real = need_dataset("fpus23") / "annotation"
    for stream in (ABD_H, ARMS_H, ARMS_V):
        (tmp_path / "annotation" / stream).mkdir(parents=True)
        shutil.copy(real / stream / "annotations.xml", tmp_path / "annotation" / stream)
    # frames beside the XML for two streams, in images/ beside it for the third
    abd_h, xml, arms_v = (tmp_path / "annotation" / s / "annotations.xml" for s in (ABD_H, ARMS_H, ARMS_V))
    assert _stand_in_frames(abd_h, abd_h.parent) == 361
    assert _stand_in_frames(xml, xml.parent / "images") == 312
    assert _stand_in_frames(arms_v, arms_v.parent) == 232

    [fetus] = fpus23_view_items(tmp_path, "fetus")
    # 311 frames of ARMS_H repeat their Orientation tag: still one item per frame
    assert _by_stream(fetus) == {(ABD_H, "hdvb"): 361, (ARMS_H, "hdvb"): 312, (ARMS_V, "hdvb"): 232}
    arms_h = [it for it in fetus if it.group == ARMS_H]
    assert [it.source for it in arms_h] == [xml.parent / "images" / f"frame_{k:06d}.png" for k in range(312)]
    assert fetus[0].source == abd_h.parent / "frame_000000.png" and fetus[0].frame is None

    [probe] = fpus23_view_items(tmp_path, "probe")   # ARMS_V carries no Probe tag
    assert _by_stream(probe) == {(ABD_H, "h"): 361, (ARMS_H, "h"): 312}

    [plane] = fpus23_view_items(tmp_path, "plane")
    assert _by_stream(plane) == {(ABD_H, "Abd_plane"): 42}
    assert (plane[0].source.name, plane[-1].source.name) == ("frame_000013.png", "frame_000323.png")

    with pytest.raises(DataError, match=f"{ARMS_V}.*no frame of the 1 annotation file.*'probe'"):
        fpus23_view_items(tmp_path / "annotation" / ARMS_V, "probe")


def test_real_counts_over_all_streams_with_images_dir(tmp_path):
    real = need_dataset("fpus23")
    for xml in sorted((real / "annotation").glob("stream_*/annotations.xml")):
        _stand_in_frames(xml, tmp_path / "frames" / xml.parent.name)
    counts, streams = {}, {}
    for task in FPUS23_TASKS:
        [items] = fpus23_view_items(real, task, images=tmp_path / "frames")
        counts[task] = Counter(it.label for it in items)
        streams[task] = Counter(label for _, label in {(it.group, it.label) for it in items})
        assert all(it.source == tmp_path / "frames" / it.group / it.source.name for it in items)
    # the numbers in the fetalkit.datasets.fpus23 docstring
    assert counts["fetus"] == {"hdvb": 3446, "hdvf": 3235, "huvb": 3676, "huvf": 4756}
    assert streams["fetus"] == {"hdvb": 10, "hdvf": 10, "huvb": 9, "huvf": 10}
    assert counts["probe"] == {"h": 7918, "v": 6963} and streams["probe"] == {"h": 20, "v": 18}
    assert counts["plane"] == {"Abd_plane": 104} and streams["plane"] == {"Abd_plane": 2}


def test_real_without_images_names_the_missing_folder(tmp_path):
    real = need_dataset("fpus23")
    first = real / "annotation" / ABD_H
    with pytest.raises(DataError, match=re.escape(
            f"15113 of 15113 FPUS23 frames labelled for 'fetus' have no image, in 39 stream(s): "
            f"e.g. frame_000000.png is not in {first} nor {first / 'images'}; put each stream's frames")):
        fpus23_view_items(real, "fetus")
    (tmp_path / "frames").mkdir()
    with pytest.raises(DataError, match=re.escape(
            f"104 of 104 FPUS23 frames labelled for 'plane' have no image, in 2 stream(s): "
            f"e.g. frame_000013.png is not in {tmp_path / 'frames' / ABD_H}; pass --images DIR")):
        fpus23_view_items(real, "plane", images=tmp_path / "frames")


# --------------------------------------------------------------------------- synthetic folder

def _truth(root: Path) -> list[dict]:
    with open(root / TRUTH_FILE, newline="") as f:
        return list(csv.DictReader(f))


def test_synthetic_round_trip_of_every_task(tmp_path):
    root = write_phantom_cvat(tmp_path / "fpus", n_streams=4, frames_per_stream=6, seed=3)
    truth = _truth(root)
    assert len(truth) == 24
    for task, spec in FPUS23_TASKS.items():
        [items] = fpus23_view_items(root, task)
        written = [(r["stream"], r["image"], r[task]) for r in truth if r[task]]
        assert [(it.group, it.source.name, it.label) for it in items] == written
        assert {it.label for it in items} <= set(spec.values)
        assert {it.group for it in items} == {f"stream_{k}" for k in range(4)}
        assert all(it.source == root / "annotation" / it.group / it.source.name for it in items)
    # the last frame of each stream has no plane tag; frame 0 repeats Orientation and is one item
    assert len(fpus23_view_items(root, "plane")[0]) == 20 and len(fpus23_view_items(root, "fetus")[0]) == 24
    assert read_view_image(fpus23_view_items(root, "probe")[0][0]).shape == (128, 192)
    # the same items from the stream_* folder and from one stream's XML
    assert fpus23_view_items(root / "annotation", "probe") == fpus23_view_items(root, "probe")
    one = fpus23_view_items(root / "annotation" / "stream_2" / "annotations.xml", "fetus")[0]
    assert [it.label for it in one] == [r["fetus"] for r in truth if r["stream"] == "stream_2"]


def test_synthetic_is_deterministic_in_seed(tmp_path):
    a, b, c = (write_phantom_cvat(tmp_path / n, n_streams=2, frames_per_stream=3, seed=s)
               for n, s in (("a", 5), ("b", 5), ("c", 6)))
    for rel in (TRUTH_FILE, "annotation/stream_1/annotations.xml", "annotation/stream_1/frame_000002.png"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / TRUTH_FILE).read_bytes() != (c / TRUTH_FILE).read_bytes()
    assert (a / "annotation/stream_0/frame_000000.png").read_bytes() != \
        (c / "annotation/stream_0/frame_000000.png").read_bytes()


def test_synthetic_cues_are_learnable_across_streams(tmp_path):
    root = write_phantom_cvat(tmp_path / "fpus", n_streams=6, frames_per_stream=12, seed=1)
    for task, spec in FPUS23_TASKS.items():
        [items] = fpus23_view_items(root, task)
        train, test = split_view_items([items], "train", seed=0), split_view_items([items], "test", seed=0)
        assert {it.group for it in train}.isdisjoint({it.group for it in test})

        def features(part):
            return np.stack([cv2.resize(read_view_image(it), (48, 32), interpolation=cv2.INTER_AREA).ravel()
                             for it in part]).astype(np.float32)

        # nearest class mean: the simplest classifier there is
        x_train, x_test = features(train), features(test)
        y_train = np.array([it.label for it in train])
        classes = [v for v in spec.values if v in set(y_train)]
        means = np.stack([x_train[y_train == v].mean(axis=0) for v in classes])
        guess = np.array(classes)[np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)]
        accuracy = float(np.mean(guess == np.array([it.label for it in test])))
        assert accuracy >= 0.9, f"{task}: {accuracy:.2f} on {len(test)} held-out frames"


def test_synthetic_errors(tmp_path):
    root = write_phantom_cvat(tmp_path / "fpus", n_streams=3, frames_per_stream=2, seed=0)
    with pytest.raises(DataError, match=r"unknown FPUS23 task 'view'; use one of plane, fetus, probe"):
        fpus23_view_items(root, "view")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'empty'}: no annotation/stream_*/annotations.xml")):
        fpus23_view_items(tmp_path / "empty", "fetus")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nowhere'}: no such folder; pass --images DIR")):
        fpus23_view_items(root, "fetus", images=tmp_path / "nowhere")
    stream1 = root / "annotation" / "stream_1"
    for png in stream1.glob("*.png"):
        png.unlink()
    with pytest.raises(DataError, match=re.escape(
            f"2 of 6 FPUS23 frames labelled for 'fetus' have no image, in 1 stream(s): "
            f"e.g. frame_000000.png is not in {stream1} nor {stream1 / 'images'}")):
        fpus23_view_items(root, "fetus")
    xml = root / "annotation" / "stream_0" / "annotations.xml"
    xml.write_text(re.sub(r'(<attribute name="Pose">)\w+<', r"\1hdvx<", xml.read_text(), count=1))
    with pytest.raises(DataError, match=re.escape(f"{xml}: image frame_000001.png: Orientation/Pose is 'hdvx', "
                                                  "not one of hdvb, hdvf, huvb, huvf")):
        fpus23_view_items(root, "fetus")
