import doctest
import math
from functools import lru_cache

import numpy as np
import pytest

import fetalkit.biometry.aop as aop_module
from fetalkit.biometry.aop import aop_from_masks, angle_of_progression, tangent_points
from fetalkit.errors import MeasurementError

from conftest import need_dataset

SIZE = 768  # large canvas: pixel sampling error ~0.5 px / tangent length stays well below 0.5 deg


@lru_cache(maxsize=1)
def _grid(size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    return xx, yy


def _bearing(rad: float) -> np.ndarray:
    return np.array([math.cos(rad), math.sin(rad)])


def _near_tangent_point(point_xy, truth, key, radius_px) -> bool:
    """``point_xy`` lies on the analytic tangent line ``key`` (within 1 px) and near its touching point.

    Where a digital circle touches a line is ill-conditioned along the circle
    (a 0.3 px radius error moves it ~sqrt(2 r 0.3) px), so only the distance to the
    line is tight; the distance to the touching point only tells the two tangents apart.
    """
    c, t = truth["caudal"], truth[key]
    direction = (t - c) / np.linalg.norm(t - c)
    offset = np.asarray(point_xy) - c
    off_line = abs(offset[0] * direction[1] - offset[1] * direction[0])
    return off_line < 1.0 and np.linalg.norm(np.asarray(point_xy) - t) < 0.25 * radius_px


def synthetic(aop_deg, rotation_deg=0.0, radius_px=80.0, dist_factor=1.8, ps_len_px=120.0, ps_width_px=7.0,
              opening="counterclockwise", size=SIZE):
    """Analytic PS (thin rectangle) + head (disc) whose far tangent from the caudal PS end makes ``aop_deg``.

    The caudal end is at a pixel centre; the cranial ray points left (rotated by
    ``rotation_deg``), as in PSFHS.  The head centre lies at distance d = k r,
    ``aop - asin(r / d)`` away from the cranial ray in the opening direction, so
    the far tangent is at exactly ``aop`` and the near one at ``aop - 2 asin(r / d)``.
    Returns (label map, dict of the analytic points).
    """
    sign = -1.0 if opening == "counterclockwise" else 1.0  # screen bearings grow clockwise (y down)
    caudal = np.array([size // 2, size * 3 // 10], dtype=float)
    b_cranial = math.radians(180.0 + rotation_deg)
    u = _bearing(b_cranial)
    d = radius_px * dist_factor
    delta = math.asin(1.0 / dist_factor)
    centre = caudal + d * _bearing(b_cranial + sign * (math.radians(aop_deg) - delta))
    tangent_len = math.sqrt(d * d - radius_px * radius_px)
    xx, yy = _grid(size)
    lab = np.zeros((size, size), np.uint8)
    lab[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius_px ** 2] = 2
    along = (xx - caudal[0]) * u[0] + (yy - caudal[1]) * u[1]
    across = -(xx - caudal[0]) * u[1] + (yy - caudal[1]) * u[0]
    lab[(along >= 0) & (along <= ps_len_px) & (np.abs(across) <= ps_width_px / 2)] = 1
    truth = {
        "caudal": caudal, "cranial": caudal + ps_len_px * u, "centre": centre,
        "far": caudal + tangent_len * _bearing(b_cranial + sign * math.radians(aop_deg)),
        "near": caudal + tangent_len * _bearing(b_cranial + sign * (math.radians(aop_deg) - 2 * delta)),
        "near_deg": aop_deg - 2 * math.degrees(delta),
    }
    return lab, truth


@pytest.mark.parametrize("aop_deg", [95, 110, 125, 140, 160])
def test_analytic_angles_over_rotations_and_scales(aop_deg):
    for rotation in (-30.0, 0.0, 25.0):
        for radius, k in ((60.0, 1.8), (100.0, 1.6), (90.0, 2.2)):
            lab, truth = synthetic(aop_deg, rotation, radius, k)
            m = angle_of_progression(lab)
            assert m.aop_deg == pytest.approx(aop_deg, abs=0.5), (rotation, radius, k)
            assert np.allclose(m.ps_caudal_xy, truth["caudal"], atol=1.0)
            assert np.allclose(m.ps_cranial_xy, truth["cranial"], atol=1.0)
            assert _near_tangent_point(m.tangent_xy, truth, "far", radius)
            assert m.opening == "counterclockwise"


def test_far_tangent_is_chosen_not_the_near_one():
    lab, truth = synthetic(120.0, 10.0, 90.0, 1.5)  # asin(1/1.5) = 41.8 deg: the tangents differ by 83.6 deg
    m = angle_of_progression(lab)
    assert m.aop_deg == pytest.approx(120.0, abs=0.5)
    assert abs(m.aop_deg - truth["near_deg"]) > 80
    assert _near_tangent_point(m.tangent_xy, truth, "far", 90.0)
    assert _near_tangent_point(m.near_tangent_xy, truth, "near", 90.0)
    assert not _near_tangent_point(m.tangent_xy, truth, "near", 90.0)
    # The near tangent point really is the other tangent: the angle there is the near angle.
    u = np.subtract(m.ps_cranial_xy, m.ps_caudal_xy)
    v = np.subtract(m.near_tangent_xy, m.ps_caudal_xy)
    near_deg = math.degrees(math.acos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))
    assert near_deg == pytest.approx(truth["near_deg"], abs=0.7)


def test_tangent_points_of_a_square():
    square = np.array([[10.0, -1.0], [12.0, -1.0], [12.0, 1.0], [10.0, 1.0]])
    t_ccw, t_cw = tangent_points(np.array([0.0, 0.0]), square)
    assert t_ccw.tolist() == [10.0, -1.0] and t_cw.tolist() == [10.0, 1.0]
    with pytest.raises(MeasurementError, match="inside the fetal head"):
        tangent_points(np.array([11.0, 0.0]), square)


def test_mirrored_image_with_mirrored_convention_gives_the_same_angle():
    lab, _ = synthetic(130.0, 15.0, 80.0, 1.9)
    m = angle_of_progression(lab)
    w = lab.shape[1]
    flipped = angle_of_progression(np.fliplr(lab), caudal_end="left", opening="clockwise")
    assert flipped.aop_deg == pytest.approx(m.aop_deg, abs=1e-6)
    assert flipped.ps_caudal_xy == pytest.approx((w - 1 - m.ps_caudal_xy[0], m.ps_caudal_xy[1]))
    assert flipped.tangent_xy == pytest.approx((w - 1 - m.tangent_xy[0], m.tangent_xy[1]))
    # Upside down: the caudal end stays on the right, the angle opens the other way.
    upside = angle_of_progression(np.flipud(lab), opening="clockwise")
    assert upside.aop_deg == pytest.approx(m.aop_deg, abs=1e-6)
    # A rotation keeps the opening direction; only the caudal direction changes.
    turned = angle_of_progression(np.rot90(lab), caudal_end="up")  # rot90: right -> up on screen
    assert turned.aop_deg == pytest.approx(m.aop_deg, abs=1e-6)
    # The PSFHS convention on a mirrored image measures something else entirely.
    wrong = angle_of_progression(np.fliplr(lab), caudal_end="left", opening="counterclockwise")
    assert wrong.aop_deg > 200


def test_clockwise_synthetic_and_auto_opening():
    for aop_deg in (100.0, 150.0):
        lab, _ = synthetic(aop_deg, -10.0, 80.0, 1.8, opening="clockwise")
        assert angle_of_progression(lab, opening="clockwise").aop_deg == pytest.approx(aop_deg, abs=0.5)
        auto = angle_of_progression(lab, opening="auto")
        assert auto.opening == "clockwise" and auto.aop_deg == pytest.approx(aop_deg, abs=0.5)
        lab, _ = synthetic(aop_deg, -10.0, 80.0, 1.8)
        assert angle_of_progression(lab, opening="auto").opening == "counterclockwise"


def test_missing_and_too_small_structures_are_named():
    lab, _ = synthetic(120.0)
    with pytest.raises(MeasurementError, match="no pubic symphysis"):
        angle_of_progression(np.where(lab == 1, 0, lab))
    with pytest.raises(MeasurementError, match="no fetal head"):
        angle_of_progression(np.where(lab == 2, 0, lab))
    tiny_ps = np.where(lab == 1, 0, lab)
    tiny_ps[5:8, 5:8] = 1
    with pytest.raises(MeasurementError, match="pubic symphysis region too small"):
        angle_of_progression(tiny_ps)
    tiny_head = np.where(lab == 2, 0, lab)
    tiny_head[600:605, 600:605] = 2
    with pytest.raises(MeasurementError, match="fetal head region too small"):
        angle_of_progression(tiny_head)


def test_caudal_point_inside_head_has_no_tangent():
    lab = np.zeros((300, 300), np.uint8)
    xx, yy = _grid(300)
    lab[(xx - 150) ** 2 + (yy - 150) ** 2 <= 80 ** 2] = 2
    lab[148:153, 100:161] = 1  # PS drawn over the head: its caudal end (x = 160) lies inside
    with pytest.raises(MeasurementError, match="inside the fetal head"):
        angle_of_progression(lab)


def test_head_across_the_symphysis_axis_is_refused():
    lab = np.zeros((300, 300), np.uint8)
    xx, yy = _grid(300)
    lab[(xx - 60) ** 2 + (yy - 150) ** 2 <= 30 ** 2] = 2  # head beyond the cranial end, on the PS axis
    lab[148:153, 120:200] = 1
    with pytest.raises(MeasurementError, match="across the pubic symphysis axis"):
        angle_of_progression(lab)


def test_ambiguous_caudal_end_and_bad_arguments():
    lab = np.zeros((300, 300), np.uint8)
    lab[50:130, 148:153] = 1  # vertical PS: "right" cannot pick an end
    xx, yy = _grid(300)
    lab[(xx - 220) ** 2 + (yy - 200) ** 2 <= 40 ** 2] = 2
    with pytest.raises(MeasurementError, match="caudal end is ambiguous"):
        angle_of_progression(lab)
    assert 0 < angle_of_progression(lab, caudal_end="up").aop_deg < 360
    with pytest.raises(ValueError):
        angle_of_progression(lab, caudal_end="north")
    with pytest.raises(ValueError):
        angle_of_progression(lab, opening="sideways")


def test_only_the_largest_regions_count():
    lab, _ = synthetic(125.0, 0.0, 80.0, 1.8)
    clean = angle_of_progression(lab).aop_deg
    noisy = lab.copy()
    noisy[700:705, 20:25] = 1  # speckle labelled PS / head far away
    noisy[10:15, 700:705] = 2
    assert angle_of_progression(noisy).aop_deg == pytest.approx(clean, abs=1e-9)
    separate = aop_from_masks(lab == 1, lab == 2)
    assert separate.aop_deg == pytest.approx(clean, abs=1e-9)


def test_docstring_examples():
    assert doctest.testmod(aop_module).failed == 0


def test_real_psfhs_labels_give_plausible_angles():
    from fetalkit.datasets.psfhs import list_psfhs

    root = need_dataset("psfhs")
    items = list_psfhs(root)
    sample = items[:: max(1, len(items) // 30)][:30]
    angles = []
    for item in sample:
        _, label = item.load()
        m = angle_of_progression(label)
        assert m.ps_caudal_xy[0] > m.ps_cranial_xy[0]
        angles.append(m.aop_deg)
    angles = np.array(angles)
    assert np.all((angles > 60) & (angles < 200)), dict(zip([i.image_id for i in sample], angles.round(1)))
    assert 90 < np.median(angles) < 140  # typical intrapartum AoP
