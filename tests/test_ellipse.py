import math

import numpy as np
import pytest

from fetalkit.biometry.ellipse import (ellipse_mask, ellipse_perimeter, ellipse_points, fit_ellipse_to_mask,
                                       fit_ellipse_to_points, make_ellipse, measure_head)
from fetalkit.errors import MeasurementError


def test_perimeter_closed_forms():
    assert ellipse_perimeter(10, 10) == pytest.approx(2 * math.pi * 10, rel=1e-12)
    assert ellipse_perimeter(5, 0) == pytest.approx(20.0, rel=5e-4)  # degenerate: 4a (Ramanujan II is 4e-4 short)
    # a=2, b=1: perimeter 9.688448220547675 (complete elliptic integral of the second kind)
    assert ellipse_perimeter(2, 1) == pytest.approx(9.688448220547675, rel=1e-9)
    assert ellipse_perimeter(1, 2) == ellipse_perimeter(2, 1)


def test_make_ellipse_is_canonical():
    e = make_ellipse(1, 2, 10, 30, 20)
    assert (e.semi_axis_a_px, e.semi_axis_b_px) == (30, 10)
    assert e.angle_deg == pytest.approx(110)
    assert make_ellipse(0, 0, 3, 1, -30).angle_deg == pytest.approx(150)
    assert 0 <= make_ellipse(0, 0, 3, 1, -1e-15).angle_deg < 180


@pytest.mark.parametrize("angle", [0, 33, 90, 145])
def test_fit_points_recovers_ellipse(angle):
    truth = make_ellipse(400.5, 270.25, 180, 130, angle)
    fitted = fit_ellipse_to_points(ellipse_points(truth, 720))
    assert fitted.center_x_px == pytest.approx(truth.center_x_px, abs=1e-2)
    assert fitted.semi_axis_a_px == pytest.approx(180, abs=0.05)
    assert fitted.semi_axis_b_px == pytest.approx(130, abs=0.05)
    assert (fitted.angle_deg - truth.angle_deg + 90) % 180 - 90 == pytest.approx(0, abs=0.05)


def test_fit_mask_hc_close_to_truth():
    truth = make_ellipse(400, 270, 200, 150, 25)
    mask = ellipse_mask(truth, (540, 800))
    assert mask.sum() == pytest.approx(math.pi * 200 * 150, rel=0.01)
    fitted = fit_ellipse_to_mask(mask)
    hc_truth = ellipse_perimeter(200, 150)
    hc_fit = ellipse_perimeter(fitted.semi_axis_a_px, fitted.semi_axis_b_px)
    assert hc_fit == pytest.approx(hc_truth, rel=0.005)


def test_fit_mask_uses_largest_region_and_rejects_empty():
    mask = ellipse_mask(make_ellipse(300, 200, 120, 90, 0), (400, 600))
    mask[10:20, 10:20] = 1  # a speck elsewhere must not disturb the fit
    assert fit_ellipse_to_mask(mask).center_x_px == pytest.approx(300, abs=0.5)
    with pytest.raises(MeasurementError):
        fit_ellipse_to_mask(np.zeros((100, 100), np.uint8))


def test_measure_head_units_and_axes():
    e = make_ellipse(0, 0, 100, 80, 10)
    m = measure_head(e, pixel_mm=0.2)
    assert m.units == "mm"
    assert m.ofd == pytest.approx(40.0) and m.bpd == pytest.approx(32.0)
    assert m.hc == pytest.approx(ellipse_perimeter(100, 80) * 0.2)
    px = measure_head(e)
    assert px.units == "px" and px.ofd == pytest.approx(200.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(MeasurementError):
            measure_head(e, pixel_mm=bad)
