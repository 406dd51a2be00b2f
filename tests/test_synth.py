"""Tests for the procedural fetal-head phantom (fetalkit.synth)."""

from __future__ import annotations

import csv
import math

import cv2
import numpy as np
import pytest

from fetalkit.biometry.ellipse import ellipse_mask, ellipse_perimeter
from fetalkit.synth import HeadPhantom, head_phantom, phantom_series, sector_mask, write_phantom_folder

SMALL_HW = (270, 400)  # half the HC18 size: same model, four times faster


@pytest.fixture(scope="module")
def phantom() -> HeadPhantom:
    return head_phantom(seed=3)


def _disk(radius_px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))


def test_same_seed_gives_identical_phantom_and_other_seed_differs():
    first = head_phantom(seed=7, shape_hw=SMALL_HW)
    again = head_phantom(seed=7, shape_hw=SMALL_HW)
    other = head_phantom(seed=8, shape_hw=SMALL_HW)
    assert np.array_equal(first.image, again.image)
    assert first.ellipse == again.ellipse and first.pixel_mm == again.pixel_mm
    assert not np.array_equal(first.image, other.image)
    assert first.ellipse != other.ellipse


def test_shapes_dtypes_and_value_sets(phantom):
    for array in (phantom.image, phantom.mask, phantom.sector):
        assert array.shape == (540, 800)
        assert array.dtype == np.uint8
    assert set(np.unique(phantom.mask)) == {0, 1}
    assert set(np.unique(phantom.sector)) == {0, 1}
    e = phantom.ellipse
    assert e.semi_axis_a_px >= e.semi_axis_b_px > 0
    assert 0.0 <= e.angle_deg < 180.0
    assert phantom.seed == 3


def test_mask_is_the_rasterised_true_ellipse(phantom):
    assert np.array_equal(phantom.mask, ellipse_mask(phantom.ellipse, phantom.mask.shape))


def test_hc_is_the_perimeter_times_pixel_size_and_realistic(phantom):
    e = phantom.ellipse
    assert phantom.hc_mm == ellipse_perimeter(e.semi_axis_a_px, e.semi_axis_b_px) * phantom.pixel_mm
    assert 0.05 <= phantom.pixel_mm <= 0.30
    assert 50.0 <= phantom.hc_mm <= 350.0
    assert 0.70 <= e.semi_axis_b_px / e.semi_axis_a_px <= 0.90


def test_requested_pixel_size_hc_and_angle_are_honoured():
    p = head_phantom(seed=1, shape_hw=SMALL_HW, pixel_mm=0.3, hc_mm=150.0, angle_deg=90.0)
    assert p.pixel_mm == 0.3
    assert math.isclose(p.hc_mm, 150.0, rel_tol=1e-9)
    assert math.isclose(p.ellipse.angle_deg, 90.0, abs_tol=1e-9)


def test_impossible_head_size_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        head_phantom(seed=0, pixel_mm=0.05, hc_mm=350.0)  # 7000 px of perimeter in 800 x 540


def test_head_lies_inside_the_sector_and_covers_a_realistic_width(phantom):
    for p in [phantom] + phantom_series(4, seed=5, shape_hw=SMALL_HW):
        assert not np.any(p.mask.astype(bool) & ~p.sector.astype(bool))
        width_fraction = 2 * p.ellipse.semi_axis_a_px / p.image.shape[1]
        assert 0.25 <= width_fraction <= 0.70


def test_outside_the_sector_is_black_and_inside_is_not(phantom):
    assert phantom.image[phantom.sector == 0].max() == 0
    assert (phantom.sector == 0).any()
    assert phantom.image[phantom.sector == 1].mean() > 20


def test_skull_ring_is_brighter_than_brain_and_surroundings(phantom):
    mask = phantom.mask
    ring = mask & ~cv2.erode(mask, _disk(5)).astype(bool)           # outer 5 px of the head
    brain = cv2.erode(mask, _disk(20)).astype(bool)                  # well inside the skull
    around = phantom.sector.astype(bool) & ~cv2.dilate(mask, _disk(20)).astype(bool)
    ring_mean = phantom.image[ring.astype(bool)].mean()
    assert ring_mean > 2.0 * phantom.image[brain].mean()
    assert ring_mean > 2.0 * phantom.image[around].mean()
    assert ring_mean > 90


def test_histogram_is_mostly_dark_with_a_bright_tail(phantom):
    in_fan = phantom.image[phantom.sector == 1]
    assert 20 <= np.median(in_fan) <= 70  # HC18: about 40
    assert np.percentile(in_fan, 99.5) >= 150


def test_sector_mask_geometry():
    fan = sector_mask((100, 100), apex_xy=(50.0, -20.0), radius_min_px=30.0, radius_max_px=100.0,
                      half_angle_deg=30.0)
    assert fan.dtype == np.uint8
    assert fan[50, 50] == 1            # straight below the apex, r = 70
    assert fan[5, 50] == 0             # r = 25: above the top arc
    assert fan[90, 50] == 0            # r = 110: below the far arc
    assert fan[30, 5] == 0             # 42 degrees off axis: outside the side edge
    assert fan[30, 70] == 1            # 22 degrees off axis, r = 54


def test_phantom_series_is_deterministic_and_regenerable():
    series = phantom_series(3, seed=2, shape_hw=SMALL_HW)
    assert len(series) == 3
    assert len({p.seed for p in series}) == 3
    assert len({p.ellipse for p in series}) == 3
    assert np.array_equal(series[1].image, head_phantom(series[1].seed, shape_hw=SMALL_HW).image)


def test_write_phantom_folder_round_trips(tmp_path):
    csv_path = write_phantom_folder(tmp_path / "phantoms", n=2, seed=4, shape_hw=SMALL_HW)
    expected = phantom_series(2, seed=4, shape_hw=SMALL_HW)
    assert csv_path == tmp_path / "phantoms" / "pixel_size.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "pixel size(mm)", "head circumference (mm)"]
    assert len(rows) == 3
    for (name, pixel_mm, hc_mm), p in zip(rows[1:], expected):
        image = cv2.imread(str(csv_path.parent / name), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.dtype == np.uint8
        assert np.array_equal(image, p.image)
        assert float(pixel_mm) == p.pixel_mm and float(hc_mm) == p.hc_mm
    with open(csv_path.parent / "ellipses.csv", newline="") as f:
        ellipses = list(csv.DictReader(f))
    for row, p in zip(ellipses, expected):
        assert float(row["center_x_px"]) == p.ellipse.center_x_px
        assert float(row["semi_axis_a_px"]) == p.ellipse.semi_axis_a_px
        assert float(row["semi_axis_b_px"]) == p.ellipse.semi_axis_b_px
        assert float(row["angle_deg"]) == p.ellipse.angle_deg
