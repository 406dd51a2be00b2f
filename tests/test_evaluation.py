import math

import numpy as np
import pytest

from fetalkit.evaluation.segmentation import dice_and_hausdorff_mm


def test_dice_and_hausdorff_known_shift():
    a = np.zeros((100, 100), np.uint8)
    b = np.zeros((100, 100), np.uint8)
    a[20:60, 20:60] = 1
    b[20:60, 25:65] = 1  # shifted 5 px to the right
    dice, hd = dice_and_hausdorff_mm(a, b, pixel_mm=0.5)
    assert dice == pytest.approx(2 * 40 * 35 / (1600 + 1600))
    assert hd == pytest.approx(2.5)


def test_empty_prediction():
    t = np.zeros((50, 50), np.uint8)
    t[10:20, 10:20] = 1
    dice, hd = dice_and_hausdorff_mm(np.zeros_like(t), t, 1.0)
    assert dice == 0 and math.isinf(hd)


def test_surface_metrics_known_shift():
    from fetalkit.evaluation.segmentation import surface_metrics
    a = np.zeros((100, 100), np.uint8)
    b = np.zeros((100, 100), np.uint8)
    a[20:60, 20:60] = 1
    b[20:60, 23:63] = 1  # 3 px right
    m = surface_metrics(a, b)
    assert m["hd95"] == pytest.approx(3.0)
    assert 0 < m["asd"] < 3.0  # top/bottom edges match partly, only the sides are 3 px off
    assert surface_metrics(a, a)["asd"] == 0 and surface_metrics(a, a)["dice"] == 1
    assert math.isinf(surface_metrics(np.zeros_like(a), b)["hd95"])


def test_challenge_score_formula():
    from fetalkit.evaluation.psfhs import challenge_score
    assert challenge_score(1.0, 0.0, 0.0, 0.0) == pytest.approx(1.0)
    assert challenge_score(0.9, 10.0, 2.0, 9.0) == pytest.approx(
        0.25 * 0.9 + 0.25 * (0.5 * 0.9 + 0.5 * 0.98) + 0.5 * (1 - 9 / 180))


def test_labels_from_probabilities_upsamples_then_argmax():
    from fetalkit.biometry.labour import labels_from_probabilities
    probs = np.zeros((3, 4, 4), np.float32)
    probs[0] = 1
    probs[2, :, 2:] = 2  # right half: class 2
    lab = labels_from_probabilities(probs, (8, 8))
    assert lab.shape == (8, 8) and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 2} and lab[:, -1].tolist() == [2] * 8 and lab[:, 0].tolist() == [0] * 8
