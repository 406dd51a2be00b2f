"""Compression tools: structured pruning keeps networks whole and smaller; counts and measurements."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
pytest.importorskip("fvcore")

from fetalkit.training.compress import (channel_ratio_for_params, count_macs, detector_ignored_layers,  # noqa: E402
                                        latency_ms, peak_inference_mb, prune_channels, step_ratios,
                                        view_ignored_layers)
from fetalkit.training.models import count_parameters  # noqa: E402


def test_pruning_a_view_classifier_halves_its_channels_and_keeps_its_classes(tmp_path):
    from fetalkit.runtime.session import OnnxModel
    from fetalkit.training.view import export_view, view_arch
    net = view_arch("resnet10-w16").build(3, "random")
    x = torch.zeros(1, 1, 64, 64)
    macs, params = count_macs(net, x), count_parameters(net)
    prune_channels(net, x, 0.5, view_ignored_layers(net))
    assert count_macs(net, x) < macs / 2.5 and count_parameters(net) < params / 2.5  # ~ (1 - 0.5)^2
    assert net.classifier.out_features == 3
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    # a pruned network is an ordinary smaller one: it exports and runs in onnxruntime
    card = export_view(net, ["a", "b", "c"], 64, tmp_path / "pruned.onnx", {})
    probs = OnnxModel(tmp_path / "pruned.onnx").predict([np.full((64, 64), 100, np.uint8)])
    assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1) < 1e-5 and card["params"] == count_parameters(net)
    assert latency_ms(tmp_path / "pruned.onnx", {"image": np.zeros((1, 1, 64, 64), np.float32)}, runs=5, warmup=1) > 0
    assert peak_inference_mb(tmp_path / "pruned.onnx", (1, 1, 64, 64)) > 0


def test_pruning_a_detector_trunk_keeps_its_head_levels_and_anchors():
    from fetalkit.training.detectors import DenseDetectorExport, build_detector
    det = build_detector("fcos-mnv2", 2, 128, "random")
    wrapper = DenseDetectorExport(det, 128).eval()
    x = torch.zeros(1, 1, 128, 128)
    with torch.no_grad():
        boxes, scores = wrapper(x)
    head_before = [m.weight.shape for m in det.head.modules() if isinstance(m, torch.nn.Conv2d)]
    macs = count_macs(wrapper, x)
    prune_channels(det, x, 0.5, detector_ignored_layers(det), traced=wrapper)
    with torch.no_grad():
        boxes2, scores2 = wrapper(torch.rand(1, 1, 128, 160))
        boxes3, _ = wrapper(x)
    assert boxes3.shape == boxes.shape and scores2.shape[-1] == scores.shape[-1] == 2
    assert [m.weight.shape for m in det.head.modules() if isinstance(m, torch.nn.Conv2d)] == head_before
    assert count_macs(wrapper, x) < macs / 1.5


def test_prune_ratio_must_be_a_fraction():
    from fetalkit.training.view import view_arch
    net = view_arch("resnet8-w8").build(2, "random")
    with pytest.raises(ValueError):
        prune_channels(net, torch.zeros(1, 1, 32, 32), 1.0, view_ignored_layers(net))


def _two_layer_net(weak_channels: int) -> torch.nn.Sequential:
    """conv(16) -> conv(16) -> 1x1 conv(2, kept); the first ``weak_channels`` filters of the first layer near zero."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 2, 1))
    with torch.no_grad():
        for conv in (net[0], net[2]):  # equal magnitudes everywhere, then a few filters made weak
            conv.weight.copy_(torch.sign(torch.randn_like(conv.weight)) * 0.1)
        net[0].weight[:weak_channels] *= 1e-3
    return net


def test_global_ranking_prunes_the_weak_layer_more_and_uniform_pruning_does_not():
    x = torch.zeros(1, 1, 16, 16)
    uniform = _two_layer_net(8)
    prune_channels(uniform, x, 0.25, [uniform[4]], round_to=1)
    assert [uniform[0].out_channels, uniform[2].out_channels] == [12, 12]
    net = _two_layer_net(8)
    prune_channels(net, x, 0.25, [net[4]], round_to=1, global_ranking=True)
    # 8 of 32 channels go, all of them the weak filters of the first layer
    assert [net[0].out_channels, net[2].out_channels] == [8, 16]
    assert net[0].weight.abs().min() > 0.05 and net[4].out_channels == 2


def test_step_ratios_compound_to_the_total():
    assert step_ratios(0.5, 1) == [0.5]
    r = step_ratios(0.5, 2)
    assert r[0] == pytest.approx(0.25) and r[1] == pytest.approx(1 / 3)
    kept = np.prod([1 - v for v in step_ratios(0.7, 3)])
    assert kept == pytest.approx(0.3)
    with pytest.raises(ValueError):
        step_ratios(0.5, 0)


def test_a_share_of_the_parameters_is_found_as_a_smaller_share_of_the_channels():
    """--ratio-of params: pruning half the channels removes about three quarters of a conv net's weights, so
    half of the weights takes fewer channels; the ratio found removes at least the share asked, by little."""
    from fetalkit.training.view import view_arch
    net = view_arch("resnet10-w16").build(3, "random")
    x = torch.zeros(1, 1, 64, 64)
    before = count_parameters(net)

    def left(r: float) -> int:
        copy = view_arch("resnet10-w16").build(3, "random")
        copy.load_state_dict(net.state_dict())
        return count_parameters(prune_channels(copy, x, r, view_ignored_layers(copy), round_to=1))
    r = channel_ratio_for_params(left, before, 0.5)
    assert 0.2 < r < 0.45
    assert 0.5 <= 1 - left(r) / before < 0.53
    assert 1 - left(r - 0.02) / before < 0.5  # the smallest such ratio, to the channel rounding
    with pytest.raises(ValueError, match="fraction"):
        channel_ratio_for_params(left, before, 1.0)
    with pytest.raises(ValueError, match="ask for less"):  # a kept layer holds most of the weights
        channel_ratio_for_params(lambda r: before, before, 0.5)


def test_a_pruned_models_card_describes_its_fine_tuning_not_the_unpruned_training():
    from fetalkit.training.compress import pruned_card
    bundled = {"name": "psfhs-fcos-mnv2", "classes": ["a", "b"], "operating_point": {"conf": 0.46},
               "params": 622664, "export_command": "fetalkit export detector runs/x/best.pt",
               "speed": {"ms_per_image_onnxruntime": 13.3}, "metrics": {"ap": 0.69},
               "train": {"epochs": 14, "best_epoch": 12, "seed": 0, "batch_size": 16, "size": 256,
                         "command": "fetalkit train detector ...", "val_metrics": {"val_ap": 0.72}}}
    best = {"epoch": 13, "metrics": {"epoch": 13, "train_loss": 0.1, "val_ap": 0.70}}
    card = pruned_card(bundled, name="det_p50", params=296936, pruning={"pruned": 0.5, "pruned_of": "params"},
                       pruned_from="psfhs-fcos-mnv2", best=best, tuning={"epochs": 14, "seed": 1, "lr": 2e-3},
                       command="python benchmarks/compression_table.py --seed 1")
    assert "speed" not in card and "export_command" not in card and card["metrics"] == {}
    assert card["train"]["best_epoch"] == 13 and card["train"]["seed"] == 1 and card["train"]["size"] == 256
    assert card["train"]["val_metrics"] == {"val_ap": 0.70} and card["train"]["command"].endswith("--seed 1")
    assert card["classes"] == ["a", "b"] and card["params"] == 296936 and card["pruned_from"] == "psfhs-fcos-mnv2"
    assert bundled["train"]["best_epoch"] == 12 and "speed" in bundled  # the unpruned card is left as it was
