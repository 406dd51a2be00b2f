"""Detector training, export (FP32 + INT8), runtime parity and the detector CLI, on a tiny generated set."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fetalkit.detection.boxes import DetSample, DetSet  # noqa: E402
from fetalkit.detection.formats import write_detection_set  # noqa: E402
from fetalkit.io.images import write_image  # noqa: E402


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def blob_set(tmp_path_factory):
    """48 speckled 64 x 64 images: a bright square ('ps') and a bright disc ('fh'); every 4th a negative."""
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(1)
    samples = []
    for i in range(48):
        image = rng.integers(10, 70, (64, 64), dtype=np.uint8)
        boxes, labels = [], []
        if i % 4:
            x, y = rng.integers(4, 30, 2)
            image[y:y + 12, x:x + 12] = 230
            boxes.append([x, y, x + 12, y + 12])
            labels.append(0)
            yy, xx = np.mgrid[:64, :64]
            cx, cy = rng.integers(40, 52, 2)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = 180
            boxes.append([cx - 8, cy - 8, cx + 9, cy + 9])
            labels.append(1)
        path = write_image(root / "src" / f"b{i:02d}.png", image)
        samples.append(DetSample(f"b{i:02d}.png", path, 64, 64, np.asarray(boxes, np.float32).reshape(-1, 4),
                                 np.asarray(labels, np.int64), group=f"g{i // 2}"))
    return write_detection_set(DetSet(["ps", "fh"], samples), root / "coco", "coco")


@pytest.fixture(scope="module")
def trained(blob_set, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    res = fetalkit("train", "detector", "--data", blob_set, "--out", run, "--epochs", "2", "--batch-size", "8",
                   "--size", "128", "--init", "random")
    assert res.returncode == 0, res.stderr
    return run


def test_training_writes_run_files(trained):
    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.png", "split.txt", "command.txt", "config.json"):
        assert (trained / name).is_file(), name
    header = (trained / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_ap", "val_ap50", "val_ap_ps", "val_ap_fh"} <= set(header)
    parts = {ln.rsplit(",", 1)[1] for ln in (trained / "split.txt").read_text().splitlines()}
    assert parts == {"train", "val", "test"}


def test_split_seed_keeps_the_split_under_another_seed(trained, blob_set, tmp_path):
    same = tmp_path / "same"
    res = fetalkit("train", "detector", "--data", blob_set, "--out", same, "--epochs", "1", "--batch-size", "8",
                   "--size", "128", "--init", "random", "--seed", "1", "--split-seed", "0")
    assert res.returncode == 0, res.stderr
    assert (same / "split.txt").read_text() == (trained / "split.txt").read_text()
    from fetalkit.datasets.splits import select_split
    from fetalkit.detection.formats import read_detection_set
    groups = read_detection_set(blob_set).groups()
    assert list(select_split(groups, "test", 1)) != list(select_split(groups, "test", 0))  # seed 1 alone would differ
    assert fetalkit("export", "detector", same / "best.pt", "--out", tmp_path / "d.onnx").returncode == 0
    card = json.loads((tmp_path / "d.json").read_text())
    assert card["split"]["seed"] == 0 and card["train"]["seed"] == 1


def test_final_fit_trains_on_train_and_val_and_keeps_the_last_epoch(trained, blob_set, tmp_path):
    run = tmp_path / "final"
    res = fetalkit("train", "detector", "--data", blob_set, "--out", run, "--epochs", "2", "--batch-size", "8",
                   "--size", "128", "--init", "random", "--final")
    assert res.returncode == 0, res.stderr
    assert "kept epoch 1" in res.stdout
    assert (run / "split.txt").read_text() == (trained / "split.txt").read_text()  # test held out as before
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert not [k for k in header if k.startswith("val_")]  # nothing held out to score
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert best["epoch"] == 1 and best["config"]["final"] is True
    from fetalkit.detection.formats import read_detection_set
    from fetalkit.training.detect import split_indices
    tr, va, _ = split_indices(read_detection_set(blob_set), 0)
    info = json.loads((run / "config.json").read_text())
    assert (info["n_train"], info["n_val"]) == (len(tr) + len(va), 0)
    # its operating point comes from the val run of its recipe (here: the bundled detector's card)
    from fetalkit.runtime.card import read_card
    from fetalkit.runtime.registry import resolve_model
    bundled = read_card(resolve_model(None, "detector"))["operating_point"]
    res = fetalkit("export", "detector", run / "best.pt", "--out", tmp_path / "f.onnx",
                   "--operating-point-from", "psfhs-fcos-mnv2")
    assert res.returncode == 0, res.stderr
    card = json.loads((tmp_path / "f.json").read_text())
    assert (card["operating_point"]["conf"], card["operating_point"]["iou"]) == (bundled["conf"], bundled["iou"])
    assert card["train"]["trained_on"] == "train+val (final fit)" and card["train"]["val_metrics"] == {}
    # its val figures are figures of training images: not stored in the card
    before = (tmp_path / "f.json").read_text()
    res = fetalkit("eval", "detector", "--data", blob_set, "--model", tmp_path / "f.onnx", "--split", "val", "--sweep",
                   "--update-card", "--out", tmp_path / "ev")
    assert res.returncode != 0 and "final fit" in res.stderr + res.stdout
    assert (tmp_path / "f.json").read_text() == before and not (tmp_path / "ev").exists()
    bad = fetalkit("export", "detector", run / "best.pt", "--out", tmp_path / "g.onnx",
                   "--operating-point-from", tmp_path / "missing.onnx")
    assert bad.returncode != 0 and "missing.onnx" in bad.stderr + bad.stdout and not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("recipe", [{"epochs": 2}, {"epochs": 3, "mosaic": 0.5, "close_mosaic": 1},
                                    {"epochs": 2, "copy_paste": 0.5}], ids=["plain", "mosaic", "copy-paste"])
def test_training_resumes_exactly(blob_set, tmp_path, recipe):
    """Stopped after epoch 0 and resumed, a run ends where an unbroken one does (with mosaic: the
    partners of the resumed mosaic epoch, then the closing epoch without it)."""
    from fetalkit.detection.formats import read_detection_set
    from fetalkit.training.detect import DetTrainConfig, fit, load_letterboxed, split_indices
    ds = read_detection_set(blob_set)
    cfg = DetTrainConfig(size=128, batch_size=8, init="random", categories=ds.categories, **recipe)
    tr, va, _ = split_indices(ds, 0)
    data = load_letterboxed(ds, 128)
    full = fit(ds, data, tr, va, cfg, tmp_path / "a")
    fit(ds, data, tr, va, cfg, tmp_path / "b", stop_after_epoch=0)
    resumed = fit(ds, data, tr, va, cfg, tmp_path / "b")
    for key in ("train_classification", "train_bbox_regression", "train_bbox_ctrness", "val_ap"):
        assert resumed["last"][key] == pytest.approx(full["last"][key], abs=1e-6), key


def test_export_parity_int8_and_runtime(trained, blob_set, tmp_path):
    from fetalkit.io.images import read_gray
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.training.detect import load_detector_checkpoint
    from fetalkit.training.detectors import DenseDetectorExport
    onnx_path = tmp_path / "det.onnx"
    res = fetalkit("export", "detector", trained / "best.pt", "--out", onnx_path, "--int8", "--data", blob_set,
                   "--calibration", "8")
    assert res.returncode == 0, res.stderr
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert card["task"] == "detector" and card["classes"] == ["ps", "fh"] and card["output"] == "dense"
    det = OnnxDetector(onnx_path)
    image = read_gray(blob_set / "images" / "b01.png")
    boxes, scores = det.candidates(image)
    model, cfg, _ = load_detector_checkpoint(trained / "best.pt")
    x, scale, _ = det.prepare(image)
    with torch.no_grad():
        tb, ts = DenseDetectorExport(model, cfg.size)(torch.from_numpy(x))
    assert np.abs(tb[0].numpy() / scale - boxes).max() < 1e-3 and np.abs(ts[0].numpy() - scores).max() < 1e-4
    # a wide frame goes in as a rectangle (64 x 128 -> 128 x 64 input), the same as torch on it
    assert card["input_multiple"] == 32
    wide = np.concatenate([image, image[:, ::-1]], axis=1)
    x, scale, _ = det.prepare(wide)
    assert x.shape == (1, 1, 64, 128)
    wide_boxes, wide_scores = det.candidates(wide)
    with torch.no_grad():
        tb, ts = DenseDetectorExport(model, cfg.size)(torch.from_numpy(x))
    assert np.abs(np.minimum(tb[0].numpy() / scale, [128, 64, 128, 64]) - wide_boxes).max() < 1e-3
    assert np.abs(ts[0].numpy() - wide_scores).max() < 1e-4
    q = OnnxDetector(tmp_path / "det-int8.onnx")
    assert json.loads((tmp_path / "det-int8.json").read_text())["precision"] == "int8"
    qb, qs = q.candidates(image)
    assert qs.shape == scores.shape and np.abs(qs - scores).mean() < 0.05
    # the box decoding reads float tensors only (8-bit anchors would step by about 1 px)
    import onnx
    from fetalkit.training.export import is_decode_tail
    graph = onnx.load(str(tmp_path / "det-int8.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    tail = [n for n in graph.node if is_decode_tail(n.name) and n.op_type in ("Add", "Mul", "Sub", "Gather")]
    assert tail and not [n.name for n in tail if dequantized & set(n.input)]


@pytest.mark.parametrize("arch", ["fcos-mnv2", "fcos-mnv2-bn", "fcos-mnv2-s32", "fcos-mnv2-w64", "retinanet-mnv2"])
def test_export_anchors_are_torchvisions(arch):
    """The in-graph anchors of the export equal torchvision's own on a square input."""
    from torchvision.models.detection.image_list import ImageList
    from fetalkit.training.detectors import DenseDetectorExport, build_detector
    model = build_detector(arch, 2, 128, init="random").eval()
    wrapper = DenseDetectorExport(model, 128)
    x = torch.zeros(1, 1, 128, 128)
    with torch.no_grad():
        feats = list(model.backbone(x).values())
        ref = model.anchor_generator(ImageList(x, [(128, 128)]), feats)[0]
        assert torch.equal(wrapper.anchors(feats), ref)
        # a rectangle whose sides the coarsest stride divides: torchvision's anchors for it too
        x = torch.zeros(1, 1, 256, 384)
        feats = list(model.backbone(x).values())
        assert torch.equal(wrapper.anchors(feats), model.anchor_generator(ImageList(x, [(256, 384)]), feats)[0])


def test_motion_blur_augmentation_smears_along_a_line_and_keeps_boxes():
    from fetalkit.training.detect import build_augment
    image = np.zeros((128, 128), np.uint8)
    image[60:68, 60:68] = 255
    box = np.array([[60.0, 60.0, 68.0, 68.0]])
    plain = build_augment(0, 128, hflip=False)
    blurred = build_augment(0, 128, hflip=False, motion_blur=1.0)
    # same seed, same draws before the blur; the blur spreads the bright square over more pixels
    a = plain(image=image, bboxes=box, labels=[0])
    b = blurred(image=image, bboxes=box, labels=[0])
    np.testing.assert_allclose(a["bboxes"], b["bboxes"])
    assert (b["image"] > 20).sum() > (a["image"] > 20).sum() + 8


def test_photometric_augmentation_changes_gray_levels_not_boxes():
    from fetalkit.training.detect import build_augment
    image = np.full((128, 128), 100, np.uint8)
    image[40:80, 40:80] = 180
    box = np.array([[40.0, 40.0, 80.0, 80.0]])
    plain, strong = build_augment(0, 128, hflip=False), build_augment(0, 128, hflip=False, photometric=1.0)
    changed = 0
    for _ in range(8):
        a = plain(image=image, bboxes=box, labels=[0])
        b = strong(image=image, bboxes=box, labels=[0])
        np.testing.assert_allclose(a["bboxes"], b["bboxes"])  # photometric only: the geometry draws agree
        assert b["image"].dtype == np.uint8 and b["image"].shape == a["image"].shape
        changed += int(np.abs(b["image"].astype(int) - a["image"]).mean() > 2)
    assert changed >= 4  # gamma is drawn with p 0.7, grain 0.5, noise 0.3


def test_level_norm_head_trains_and_exports(blob_set, tmp_path):
    """fcos-mnv2-bn: no GroupNorm anywhere, one BatchNorm per level, exports with free input sides."""
    run = tmp_path / "bn"
    res = fetalkit("train", "detector", "--data", blob_set, "--out", run, "--epochs", "1", "--batch-size", "8",
                   "--size", "128", "--init", "random", "--arch", "fcos-mnv2-bn", "--aspect-crops", "0.5",
                   "--motion-blur", "0.3", "--mosaic", "0.5", "--close-mosaic", "1", "--copy-paste", "0.5")
    assert res.returncode == 0, res.stderr
    from fetalkit.training.detect import load_detector_checkpoint
    model, cfg, _ = load_detector_checkpoint(run / "best.pt")
    assert cfg.aspect_crops == 0.5 and cfg.motion_blur == 0.3 and cfg.mosaic == 0.5 and cfg.close_mosaic == 1
    assert cfg.copy_paste == 0.5
    assert not [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(model.head.classification_head.tower.norms) == 4
    assert fetalkit("export", "detector", run / "best.pt", "--out", tmp_path / "bn.onnx").returncode == 0
    from fetalkit.runtime.detector import OnnxDetector
    det = OnnxDetector(tmp_path / "bn.onnx")
    boxes, scores = det.candidates(np.zeros((40, 128), np.uint8))
    assert det.prepare(np.zeros((40, 128), np.uint8))[0].shape == (1, 1, 64, 128) and boxes.shape[0] == scores.shape[0]


def test_fine_tune_from_a_groupnorm_checkpoint(trained, blob_set, tmp_path):
    """--from-checkpoint: a GroupNorm model's weights carried into fcos-mnv2-bn, then trained on."""
    from fetalkit.training.detect import load_detector_checkpoint, read_checkpoint_weights
    from fetalkit.training.detectors import build_detector, warm_start
    source, _, _ = load_detector_checkpoint(trained / "best.pt")
    state = read_checkpoint_weights(trained / "best.pt")
    assert warm_start(build_detector("fcos-mnv2", 2, 128, "random"), state) == []
    model = build_detector("fcos-mnv2-bn", 2, 128, "random")
    fresh = warm_start(model, state)
    assert fresh and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var") for k in fresh)
    torch.testing.assert_close(model.backbone.body["0"][0].weight, source.backbone.body["0"][0].weight)
    gn_conv, gn = source.head.regression_head.conv[3], source.head.regression_head.conv[4]
    assert isinstance(gn, torch.nn.GroupNorm)
    torch.testing.assert_close(model.head.regression_head.tower.convs[1].weight, gn_conv.weight)
    for level in model.head.regression_head.tower.norms:
        torch.testing.assert_close(level[1].bias, gn.bias)
    torch.testing.assert_close(model.head.classification_head.cls_logits.weight,
                               source.head.classification_head.cls_logits.weight)

    run = tmp_path / "ft"
    res = fetalkit("train", "detector", "--data", blob_set, "--out", run, "--epochs", "1", "--batch-size", "8",
                   "--size", "128", "--arch", "fcos-mnv2-bn", "--from-checkpoint", trained / "best.pt")
    assert res.returncode == 0, res.stderr
    assert load_detector_checkpoint(run / "best.pt")[1].from_checkpoint == str(trained / "best.pt")

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for path in (bad, tmp_path / "missing.pt"):
        res = fetalkit("train", "detector", "--data", blob_set, "--out", tmp_path / "ft2", "--from-checkpoint", path)
        assert res.returncode == 1 and path.name in res.stderr and "best.pt" in res.stderr
        assert "Traceback" not in res.stderr and not (tmp_path / "ft2").exists()


def test_eval_detect_and_sweep_cli(trained, blob_set, tmp_path):
    onnx_path = tmp_path / "det.onnx"
    assert fetalkit("export", "detector", trained / "best.pt", "--out", onnx_path).returncode == 0
    res = fetalkit("eval", "detector", "--data", blob_set, "--model", onnx_path, "--out", tmp_path / "ev",
                   "--split", "val", "--sweep", "--update-card", "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert 0.0 <= s["ap"] <= 1.0 and "fppi_ps" in s and s["sweep_best"]["iou"] in (0.4, 0.5, 0.6, 0.7)
    assert (tmp_path / "ev" / "f1_curve.png").is_file() and (tmp_path / "ev" / "detections.json").is_file()
    op = json.loads(onnx_path.with_suffix(".json").read_text())["operating_point"]
    assert op["conf"] == s["sweep_best"]["conf"] and op["chosen_on"].startswith("val split")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    res = fetalkit("detect", blob_set / "images" / "b01.png", bad, "--model", onnx_path, "--out", tmp_path / "d",
                   "--conf", "0.001", "--overlay")
    assert res.returncode == 1 and "bad.png" in res.stderr and "Traceback" not in res.stderr
    recs = json.loads((tmp_path / "d" / "detections.json").read_text())
    assert recs and {"file_name", "category", "bbox", "score"} <= set(recs[0])
    assert all(r["file_name"].endswith("b01.png") for r in recs)
    assert (tmp_path / "d" / "overlays" / "b01.png").is_file()


def test_cli_bad_inputs(blob_set, tmp_path, trained):
    res = fetalkit("eval", "detector", "--data", blob_set, "--model",
                   "src/fetalkit/models/head-unet-mnv2.onnx", "--out", tmp_path / "e")
    assert res.returncode == 1 and "head-seg model, but this command needs a detector" in res.stderr
    assert not (tmp_path / "e").exists()
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "classes.txt").write_text("ps\n")
    res = fetalkit("train", "detector", "--data", empty, "--out", tmp_path / "r")
    assert res.returncode == 1 and "no images found" in res.stderr
    res = fetalkit("data", "boxes", blob_set, "--out", blob_set)
    assert res.returncode == 1 and "already exists" in res.stderr
    res = fetalkit("train", "detector", "--data", blob_set, "--out", tmp_path / "r2", "--arch", "yolo")
    assert res.returncode == 1 and "unknown detector architecture 'yolo'" in res.stderr


class _ConstantYolo(torch.nn.Module):
    """Outputs fixed raw predictions whatever the image: a stand-in for a YOLO ONNX export."""

    def __init__(self, raw):
        super().__init__()
        self.register_buffer("raw", torch.tensor(raw, dtype=torch.float32)[None])

    def forward(self, images):
        return self.raw + images.mean() * 0


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
def test_yolo_onnx_plugin_layouts(tmp_path, layout):
    import onnx
    from fetalkit.runtime.detector import OnnxDetector
    # one candidate at (cx, cy, w, h) = (320, 320, 100, 50) in the 640 px letterboxed input, class 1
    if layout == "yolov8":
        raw = np.zeros((4 + 2, 20))  # real exports hold thousands of candidates: more columns than rows
        raw[:, 0] = [320, 320, 100, 50, 0.05, 0.9]
        raw[:, 1] = [100, 100, 20, 20, 0.1, 0.05]
    else:
        raw = np.zeros((20, 5 + 2))
        raw[0] = [320, 320, 100, 50, 0.5, 0.1, 0.8]
    path = tmp_path / f"{layout}.onnx"
    torch.onnx.export(_ConstantYolo(raw), (torch.zeros(1, 3, 640, 640),), str(path), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    m.metadata_props.add(key="names", value="{0: 'pubic_symphysis', 1: 'fetal_head'}")
    onnx.save(m, str(path))
    det = OnnxDetector(path)
    assert det.spec.layout == layout and det.classes == ["pubic_symphysis", "fetal_head"]
    d = det.detect(np.full((480, 640), 50, np.uint8), conf=0.3, iou=0.5)  # letterbox: 80 px bands above/below
    assert d.labels.tolist() == [1]
    np.testing.assert_allclose(d.boxes_xyxy[0], [270, 215, 370, 265], atol=1e-3)
    assert d.scores[0] == pytest.approx(0.9 if layout == "yolov8" else 0.4, abs=1e-6)
    m.ClearField("metadata_props")
    onnx.save(m, str(path))
    from fetalkit.errors import ModelError
    with pytest.raises(ModelError, match="without class names"):
        OnnxDetector(path)
    assert OnnxDetector(path, class_names=["a", "b"]).classes == ["a", "b"]


def test_mosaic_mixes_partner_images_and_keeps_their_boxes():
    """Each draw is a crop of a 2 x 2 grid: gray levels of the partners appear, every box left
    lies on a bright square of its own image, and the partners come from the pipeline's generator."""
    from fetalkit.training.detect import DetDataset, LetterboxedSet, build_augment
    size, levels = 128, (40, 80, 120, 160)
    images = np.stack([np.full((size, size), v, np.uint8) for v in levels])
    boxes = []
    for k, img in enumerate(images):
        img[30:60, 30:60] = 250
        boxes.append(np.array([[30.0, 30.0, 60.0, 60.0]], np.float32))
    data = LetterboxedSet(images, boxes, [np.array([k % 2]) for k in range(4)], np.ones(4))

    def draws(seed):
        aug = build_augment(seed, size, hflip=False, mosaic=1.0)
        ds = DetDataset(data, np.arange(4), aug, mosaic=True)
        return [ds[k % 4] for k in range(8)]

    mixed = 0
    for x, target in draws(0):
        pixels = (x[0].numpy() * 255).round()
        present = [v for v in levels if np.abs(pixels - v).min() < 12]
        mixed += len(present) >= 2
        for box in target["boxes"].numpy():
            x1, y1, x2, y2 = np.round(box).astype(int)
            assert x2 > x1 and y2 > y1
            assert pixels[y1:y2, x1:x2].mean() > 200  # the box still covers its bright square
    assert mixed >= 6  # the crop centre is drawn in the middle of the grid: most show 2+ images
    # the same seed draws the same mosaics (the partners come from the saved generator)
    for (xa, ta), (xb, tb) in zip(draws(3), draws(3)):
        assert torch.equal(xa, xb) and torch.equal(ta["boxes"], tb["boxes"])


def test_close_mosaic_turns_it_off_between_epochs():
    from fetalkit.training.detect import DetDataset, LetterboxedSet, build_augment, set_mosaic
    size, levels = 96, (40, 80, 120, 160)
    images = np.stack([np.full((size, size), v, np.uint8) for v in levels])
    data = LetterboxedSet(images, [np.zeros((0, 4), np.float32)] * 4, [np.zeros(0, np.int64)] * 4, np.ones(4))
    ds = DetDataset(data, np.arange(4), build_augment(0, size, hflip=False, mosaic=1.0), mosaic=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=1)

    def images_seen(k):  # flat gray plateaus covering > 5 % of the frame (the black fill aside)
        values, counts = np.unique((ds[k % 4][0][0].numpy() * 255).round(), return_counts=True)
        return int(((counts > 0.05 * size * size) & (values > 0)).sum())

    assert sum(images_seen(k) >= 2 for k in range(8)) >= 6
    set_mosaic(loader, 0.0)  # the last epochs: whole frames only
    assert not ds.mosaic and all(images_seen(k) == 1 for k in range(8))
    set_mosaic(loader, 1.0)
    assert sum(images_seen(k) >= 2 for k in range(8)) >= 6


def test_copy_paste_puts_a_donor_structure_into_the_imaged_area_of_a_negative():
    from fetalkit.training.detect import PASTE_FEATHER_PX, paste_structures
    rng = np.random.default_rng(0)
    # a negative for class 0: imaged area in rows 40-127 (above: black, like PSFHS's blanked rows), a class-1 box
    image = np.zeros((128, 128), np.uint8)
    image[40:] = rng.integers(60, 90, (88, 128))
    boxes, labels = np.array([[10.0, 90.0, 60.0, 126.0]], np.float32), np.array([1])
    donor = np.full((128, 128), 70, np.uint8)
    donor[20:44, 70:100] = np.arange(24 * 30).reshape(24, 30) % 200 + 50  # the donor's class-0 structure
    donor_boxes, donor_labels = np.array([[70.0, 20.0, 100.0, 44.0], [0.0, 60.0, 50.0, 100.0]], np.float32), np.array([0, 1])
    before = image.copy()
    for seed in range(5):
        out, new_boxes, new_labels = paste_structures(image, boxes, labels, donor, donor_boxes, donor_labels,
                                                      np.random.default_rng(seed))
        np.testing.assert_array_equal(image, before)  # the input is not modified
        assert new_labels.tolist() == [1, 0]  # only the class it lacked; the class-1 donor box is not pasted
        x1, y1, x2, y2 = new_boxes[1].astype(int)
        assert (x2 - x1, y2 - y1) == (30, 24) and y1 >= 40  # inside the imaged area
        iw, ih = max(0, min(x2, 60) - max(x1, 10)), max(0, min(y2, 126) - max(y1, 90))
        assert iw * ih <= 0.3 * 50 * 36  # the image's own box stays mostly visible
        f = PASTE_FEATHER_PX
        np.testing.assert_array_equal(out[y1 + f:y2 - f, x1 + f:x2 - f], donor[20 + f:44 - f, 70 + f:100 - f])
        outside = np.ones_like(image, bool)
        outside[y1:y2, x1:x2] = False
        np.testing.assert_array_equal(out[outside], image[outside])
    # nowhere to put it: the imaged area is too shallow for the structure, or all of it is one box
    shallow = image.copy()
    shallow[:110] = 0
    out, new_boxes, new_labels = paste_structures(shallow, boxes[:0], labels[:0], donor, donor_boxes, donor_labels, rng)
    assert new_labels.tolist() == [] and np.array_equal(out, shallow)  # neither donor box fits in 18 rows
    small = np.zeros_like(image)
    small[80:120, 40:80] = 70
    crowded = np.array([[40.0, 80.0, 80.0, 120.0]], np.float32)
    out, new_boxes, new_labels = paste_structures(small, crowded, labels[:1] * 0 + 1, donor, donor_boxes[:1],
                                                  donor_labels[:1], rng)
    assert new_labels.tolist() == [1] and np.array_equal(out, small)


def test_copy_paste_in_the_training_set_gives_negatives_boxes():
    from fetalkit.training.detect import DetDataset, LetterboxedSet, build_augment
    size = 128
    images = np.stack([np.full((size, size), 80, np.uint8) for _ in range(4)])
    images[0, 30:60, 30:60] = 250
    boxes = [np.array([[30.0, 30.0, 60.0, 60.0]], np.float32)] + [np.zeros((0, 4), np.float32)] * 3
    labels = [np.array([0])] + [np.zeros(0, np.int64)] * 3
    data = LetterboxedSet(images, boxes, labels, np.ones(4))
    ds = DetDataset(data, np.arange(4), build_augment(0, size, hflip=False), copy_paste=1.0)
    with_box = 0
    for k in (1, 2, 3) * 3:
        x, target = ds[k]
        pixels = (x[0].numpy() * 255).round()
        for box in target["boxes"].numpy():
            bx1, by1, bx2, by2 = np.round(box).astype(int)
            assert pixels[by1:by2, bx1:bx2].mean() > 180  # the pasted bright square, moved with the image
        with_box += len(target["boxes"]) > 0
        assert target["labels"].tolist() in ([], [1])
    assert with_box >= 7  # pasted every time; the affine / crop may push one out of the frame
    plain = DetDataset(data, np.arange(4), build_augment(0, size, hflip=False))
    assert all(len(plain[k][1]["boxes"]) == 0 for k in (1, 2, 3))


def test_distillation_pulls_a_pruned_detector_toward_its_teacher(trained, blob_set, tmp_path):
    """The same pruned network fine-tuned with and without --distill-from: with it, its FPN features on
    held-out images end closer to the unpruned teacher's."""
    import copy
    pytest.importorskip("torch_pruning")
    from fetalkit.detection.formats import read_detection_set
    from fetalkit.training.compress import detector_ignored_layers, prune_channels
    from fetalkit.training.detect import fit, load_detector_checkpoint, load_letterboxed, split_indices
    from fetalkit.training.detectors import DenseDetectorExport
    from fetalkit.training.distill import feature_imitation_loss
    teacher, cfg, _ = load_detector_checkpoint(trained / "best.pt")
    ds = read_detection_set(blob_set)
    tr, va, _ = split_indices(ds, cfg.data_split_seed)
    data = load_letterboxed(ds, cfg.size)
    pruned = copy.deepcopy(teacher)
    prune_channels(pruned, torch.zeros(1, 1, 128, 128), 0.5, detector_ignored_layers(pruned),
                   traced=DenseDetectorExport(pruned, 128))
    x = torch.from_numpy(data.images[va].astype(np.float32) / 255.0)[:, None]

    def distance(model) -> float:
        wrap = DenseDetectorExport(model.eval(), 128).eval()
        with torch.no_grad():
            z = (x - wrap.mean) / wrap.std
            return float(feature_imitation_loss(list(model.backbone(z).values()), list(teacher.backbone(z).values())))

    results = {}
    for name, distill in (("plain", None), ("distilled", str(trained / "best.pt"))):
        tune = copy.deepcopy(cfg)
        tune.epochs, tune.lr, tune.distill_from, tune.distill_weight = 3, 1e-3, distill, 5.0
        student = copy.deepcopy(pruned)
        fit(ds, data, tr, va, tune, tmp_path / name, model=student)
        results[name] = distance(student)
        assert not student.backbone._forward_hooks and not student.head._forward_hooks
    header = (tmp_path / "distilled" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_distill_features", "train_distill_outputs"} <= set(header)
    assert results["distilled"] < 0.8 * results["plain"], results


def test_distill_from_cli_records_the_teacher_and_refuses_a_bad_file(trained, blob_set, tmp_path):
    from fetalkit.training.detect import load_detector_checkpoint
    run = tmp_path / "kd"
    res = fetalkit("train", "detector", "--data", blob_set, "--out", run, "--epochs", "1", "--batch-size", "8",
                   "--size", "128", "--arch", "fcos-mnv2-bn", "--from-checkpoint", trained / "best.pt",
                   "--distill-from", trained / "best.pt", "--distill-weight", "2")
    assert res.returncode == 0, res.stderr
    cfg = load_detector_checkpoint(run / "best.pt")[1]
    assert (cfg.distill_from, cfg.distill_weight) == (str(trained / "best.pt"), 2.0)
    res = fetalkit("train", "detector", "--data", blob_set, "--out", tmp_path / "kd2", "--distill-from",
                   tmp_path / "missing.pt")
    assert res.returncode == 1 and "missing.pt" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "kd2").exists()
    # a teacher whose FPN differs from the student's is refused with one line
    res = fetalkit("train", "detector", "--data", blob_set, "--out", tmp_path / "kd3", "--epochs", "1",
                   "--batch-size", "8", "--size", "128", "--arch", "retinanet-mnv2", "--init", "random",
                   "--distill-from", trained / "best.pt")
    assert res.returncode == 1 and "FPN" in res.stderr and "Traceback" not in res.stderr
