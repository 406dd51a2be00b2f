"""The training loop, resume and ONNX export on tiny generated data (seconds, CPU)."""

import csv

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fetalkit.biometry.ellipse import ellipse_mask, make_ellipse  # noqa: E402
from fetalkit.training.export import export_segmenter, torch_onnx_max_abs_diff  # noqa: E402
from fetalkit.training.models import build_segmenter, count_parameters, set_encoder_trainable  # noqa: E402
from fetalkit.training.segment import SegData, TrainConfig, fit  # noqa: E402


def tiny_data(n=12, hw=(64, 96), seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, *hw), dtype=np.uint8)
    targets = np.zeros((n, *hw), np.uint8)
    for i in range(n):
        e = make_ellipse(rng.uniform(35, 60), rng.uniform(25, 40), rng.uniform(12, 20), rng.uniform(8, 12),
                         rng.uniform(0, 180))
        m = ellipse_mask(e, hw)
        images[i][m > 0] += 120
        targets[i] = m * 255
    return SegData(images, targets, 1)


def val_metric(probs, idx):
    return {"val_mean_prob": float(probs.mean())}


def test_imagenet_init_changes_encoder_and_freezing_leaves_decoder():
    a = build_segmenter("unet-mobilenet_v2", 1, "random")
    b = build_segmenter("unet-mobilenet_v2", 1, "imagenet")
    ka = a.encoder.state_dict()["features.1.conv.0.0.weight"]
    kb = b.encoder.state_dict()["features.1.conv.0.0.weight"]
    assert not torch.allclose(ka, kb)
    assert b.encoder.state_dict()["features.0.0.weight"].shape[1] == 1  # RGB filters summed for gray input
    total = count_parameters(b)
    set_encoder_trainable(b, False)
    trainable = count_parameters(b, trainable_only=True)
    assert 0 < trainable < total - 2_000_000  # the 2.2 M encoder parameters are frozen


def test_fit_writes_metrics_resumes_and_exports(tmp_path):
    data = tiny_data()
    cfg = TrainConfig(init="random", epochs=3, batch_size=4, input_hw=(64, 96), threads=1, seed=1)
    straight, run = tmp_path / "straight", tmp_path / "run"
    fit(data, np.arange(8), np.arange(8, 12), cfg, straight, val_metric, "val_loss", "min")
    # interrupted after epoch 1, then resumed: must end exactly where the straight run ended
    fit(data, np.arange(8), np.arange(8, 12), cfg, run, val_metric, "val_loss", "min", stop_after_epoch=1)
    assert [int(r["epoch"]) for r in csv.DictReader(open(run / "metrics.csv"))] == [0, 1]
    fit(data, np.arange(8), np.arange(8, 12), cfg, run, val_metric, "val_loss", "min")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    ref = list(csv.DictReader(open(straight / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([float(r["train_loss"]) for r in ref], rel=1e-4)
    assert (run / "metrics.png").stat().st_size > 1000 and (run / "best.pt").is_file()

    onnx_path = tmp_path / "m.onnx"
    card = export_segmenter(run / "best.pt", "head-seg", onnx_path)
    assert card["input_hw"] == [64, 96] and card["params"] > 3_000_000
    images = [np.random.default_rng(2).integers(0, 255, (120, 200), dtype=np.uint8)]
    assert torch_onnx_max_abs_diff(run / "best.pt", onnx_path, images, 1) < 1e-4


def test_multiclass_export_is_channel_softmax_without_softmax_node(tmp_path):
    import onnx
    import onnxruntime as ort
    from fetalkit.training.segment import ProbabilityHead, export_onnx
    torch.manual_seed(0)
    model = build_segmenter("unet-mobilenet_v2", 3, "random").eval()
    path = export_onnx(model, 3, (64, 64), tmp_path / "m.onnx")
    # onnxruntime's Softmax works on the last axis; the channel softmax is exported element-wise instead
    assert "Softmax" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = model(x).softmax(1).numpy()
        head = ProbabilityHead(model, 3)(x).numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert np.abs(head - ref).max() < 1e-6 and np.abs(out - ref).max() < 1e-5
    assert np.allclose(out.sum(1), 1.0, atol=1e-5)
