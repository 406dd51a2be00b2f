"""The scan-view classifier: inputs, splits, a tiny training run, export, eval and `fetalkit classify`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from fetalkit.datasets.views import ViewItem, public_view_items, read_view_image, split_view_items
from fetalkit.errors import DataError
from fetalkit.runtime.classifier import view_input
from fetalkit.synth.phantom import head_phantom
from fetalkit.synth.sequences import on_wide_screen


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


def test_view_input_ignores_a_wide_black_screen_around_the_image():
    p = head_phantom(seed=2, shape_hw=(200, 300))
    wide, _ = on_wide_screen(p.image, 2.0)
    direct, on_screen = view_input(p.image, 96), view_input(wide, 96)
    uncropped = cv2.resize(wide, (96, 48), interpolation=cv2.INTER_AREA)
    assert on_screen.shape == (96, 96)
    # the screen's black sides are cropped before letterboxing: the image keeps (nearly) the
    # width it has without the screen, not the half it would keep on a 2:1 screen
    width = lambda im: int((im.max(axis=0) > 0).sum())  # noqa: E731
    assert width(on_screen) >= 0.9 * width(direct) and width(uncropped) <= 0.8 * width(direct)
    assert on_screen[:4].max() == 0  # letterbox padding above a landscape image is black


def test_split_keeps_groups_whole_and_every_source_in_every_part():
    sources = [[ViewItem(Path(f"a{i}.png"), "a", f"ga{i // 3}") for i in range(60)],
               [ViewItem(Path(f"b{i}.png"), "b", f"gb{i // 2}") for i in range(20)]]
    parts = {p: split_view_items(sources, p, seed=0) for p in ("train", "val", "test")}
    groups = {p: {it.group for it in items} for p, items in parts.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])
    assert sum(len(v) for v in parts.values()) == 80
    for items in parts.values():
        assert {it.label for it in items} == {"a", "b"}


def _tiny_sources(root: Path) -> list[list[ViewItem]]:
    """Two learnable classes from the phantom: heads, and the same heads in negative."""
    heads, textures = [], []
    for i in range(24):
        p = head_phantom(seed=i, shape_hw=(120, 160))
        cv2.imwrite(str(root / f"head_{i}.png"), p.image)
        heads.append(ViewItem(root / f"head_{i}.png", "head", f"h{i // 2}"))
        cv2.imwrite(str(root / f"negative_{i}.png"), 255 - p.image)
        textures.append(ViewItem(root / f"negative_{i}.png", "negative", f"n{i // 2}"))
    return [heads, textures]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("torch")
    from fetalkit.training.view import ViewTrainConfig, export_view_run, train_view
    root = tmp_path_factory.mktemp("views")
    sources = _tiny_sources(root)
    run = root / "run"
    cfg = ViewTrainConfig(arch="resnet8-w8", size_px=64, epochs=6, batch_size=8, lr=3e-3, init="random")
    result = train_view(sources, run, cfg)
    card = export_view_run(run / "best.pt", root / "tiny-view.onnx", int8=True)
    return root, sources, result, card


def test_training_learns_the_tiny_task_and_exports_a_card(tiny_run):
    root, _, result, card = tiny_run
    assert result["classes"] == ["head", "negative"] and result["best"] >= 0.9
    assert card["task"] == "view" and card["classes"] == ["head", "negative"] and card["input_hw"] == [64, 64]
    assert card["split"]["train"] + card["split"]["val"] + card["split"]["test"] == 48
    assert Path(card["int8_file"]).is_file()
    int8_card = json.loads(Path(card["int8_file"]).with_suffix(".json").read_text())
    assert int8_card["precision"] == "int8" and int8_card["classes"] == card["classes"]


def test_onnx_gives_the_probabilities_of_the_torch_network(tiny_run):
    import torch
    from fetalkit.runtime.classifier import ViewClassifier
    from fetalkit.runtime.preprocess import GRAY_MEAN, GRAY_STD, normalise
    from fetalkit.training.view import load_view_checkpoint
    root, sources, _, _ = tiny_run
    model, _ = load_view_checkpoint(root / "run" / "best.pt")
    images = [cv2.imread(str(it.source), cv2.IMREAD_GRAYSCALE) for it in sources[0][:4] + sources[1][:4]]
    onnx_probs = ViewClassifier(root / "tiny-view.onnx").probabilities(images)
    x = torch.from_numpy(normalise(np.stack([view_input(im, 64) for im in images]), GRAY_MEAN, GRAY_STD)[:, None])
    with torch.no_grad():
        torch_probs = torch.softmax(model(x), 1).numpy()
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    assert np.allclose(onnx_probs.sum(1), 1, atol=1e-5)


def test_eval_scores_the_held_out_part_and_draws_the_confusion_matrix(tiny_run, tmp_path):
    from fetalkit.evaluation.view import evaluate_view
    root, sources, _, _ = tiny_run
    scores = evaluate_view(str(root / "tiny-view.onnx"), sources, "test", None, tmp_path)
    test = split_view_items(sources, "test", 0)
    assert scores["n"] == len(test) and sum(map(sum, scores["confusion"])) == len(test)
    assert scores["accuracy"] == pytest.approx(np.trace(scores["confusion"]) / len(test))
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test) and {r["group"] for r in rows} == {it.group for it in test}


def test_classify_writes_a_row_per_input_and_names_bad_files(tiny_run, tmp_path):
    root, sources, _, _ = tiny_run
    (tmp_path / "broken.png").write_bytes(b"not an image")
    res = fetalkit("classify", sources[0][0].source, sources[1][0].source, tmp_path / "broken.png",
                   "--model", root / "tiny-view.onnx", "--out", tmp_path / "out")
    assert res.returncode == 1 and "broken.png" in res.stderr and "Traceback" not in res.stderr
    with open(tmp_path / "out" / "classes.csv") as f:
        rows = {Path(r["filename"]).name: r for r in csv.DictReader(f)}
    assert rows["head_0.png"]["class"] == "head" and rows["negative_0.png"]["class"] == "negative"
    assert float(rows["head_0.png"]["p_head"]) == pytest.approx(float(rows["head_0.png"]["probability"]))
    assert rows["broken.png"]["error"] and not rows["broken.png"]["class"]


def test_public_sets_give_anatomy_classes_split_by_their_groups():
    from tests.conftest import need_dataset
    root = need_dataset("hc18").parent
    sources = public_view_items(root)
    counts = Counter(it.label for items in sources for it in items)
    by_origin = Counter((it.origin, it.label) for items in sources for it in items)
    assert set(counts) == {"fetal_head", "intrapartum_transperineal", "fetal_heart", "other_fetal_plane",
                           "not_ultrasound"}
    assert by_origin[("hc18", "fetal_head")] == 852
    scans = [it for items in sources for it in items if it.origin == "psfhs"]
    assert sum(not it.derive for it in scans) == 1168 and sum(bool(it.derive) for it in scans) == 1168
    derived = next(it for it in scans if it.derive)
    image, label = read_view_image(derived), cv2.imread(str(derived.source), cv2.IMREAD_GRAYSCALE)
    assert image.shape == label.shape and (image == 0).sum() > (label == 0).sum()  # rows blanked, same scan
    assert by_origin[("feecho4d", "fetal_heart")] == 103 and by_origin[("phantom", "fetal_head")] == 60
    if (root / "fetal_planes_db").is_dir():  # the trans-thalamic brains are heads now, the thorax hearts
        assert by_origin[("fetal_planes_db", "fetal_head")] == 11 and by_origin[("fetal_planes_db", "fetal_heart")] == 7
    test = split_view_items(sources, "test", 0)
    train = split_view_items(sources, "train", 0)
    assert not ({it.group for it in test} & {it.group for it in train})
    assert {it.label for it in test} == set(counts)
    with pytest.raises(DataError, match="--leave-out nowhere:fetal_head"):
        public_view_items(root, leave_out=("nowhere:fetal_head",))


def test_train_view_cli_on_a_cvat_folder_and_on_class_folders(tmp_path):
    pytest.importorskip("torch")
    from fetalkit.datasets.views import view_sources
    from fetalkit.synth.cvat import write_phantom_cvat
    cvat = tmp_path / "cvat"
    write_phantom_cvat(cvat, n_streams=6, frames_per_stream=4, seed=0)
    res = fetalkit("train", "view", "--data", cvat, "--task", "probe", "--out", tmp_path / "run", "--arch",
                   "resnet8-w8", "--size", "64", "--epochs", "1", "--batch-size", "4")
    assert res.returncode == 0, res.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["classes"] == ["h", "v"]
    groups = {line.rsplit(",", 3)[2] for line in (tmp_path / "run" / "split.txt").read_text().splitlines()}
    assert all(g.startswith("stream_") for g in groups)  # split by stream, never by frame
    # class folders: ROOT/<class>/<acquisition>/<image>
    for label in ("bpd", "ac"):
        for k in range(3):
            (tmp_path / "folders" / label / f"patient{k}").mkdir(parents=True)
            cv2.imwrite(str(tmp_path / "folders" / label / f"patient{k}" / "f0.png"), head_phantom(seed=k).image)
    sources = view_sources(tmp_path / "folders")
    assert [{it.label for it in s} for s in sources] == [{"ac"}, {"bpd"}]
    assert {it.group for it in sources[1]} == {"bpd/patient0", "bpd/patient1", "bpd/patient2"}
    bad = fetalkit("train", "view", "--data", tmp_path / "nothing", "--out", tmp_path / "r2")
    assert bad.returncode == 1 and "no such folder" in bad.stderr


def test_bundled_view_model_meets_its_target_on_the_held_out_public_images(tmp_path):
    from tests.conftest import need_dataset
    from fetalkit.evaluation.view import evaluate_view
    root = need_dataset("hc18").parent
    scores = evaluate_view("view-mnv2", public_view_items(root), "test", None, tmp_path)
    assert scores["n"] == 543  # the split the card records
    for c in ("fetal_head", "intrapartum_transperineal"):  # the classes of >= 100 test images
        assert scores["per_class"][c]["recall"] >= 0.97 and scores["per_class"][c]["precision"] >= 0.97
    assert scores["accuracy"] >= 0.97
    assert scores["per_source"]["hc18:fetal_head"]["accuracy"] >= 0.97
