"""Tests for imaging-sector detection (fetalkit.preprocess.sector)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import need_dataset

from fetalkit.errors import InputError
from fetalkit.io.images import read_gray
from fetalkit.preprocess.sector import (Sector, crop_to_sector, detect_sector, detect_sector_in_frames,
                                        draw_sector_overlay, mask_from_description, rect_mask,
                                        sector_mask_from_geometry)
from fetalkit.synth.phantom import head_phantom, sector_mask

REFERENCE = Path(__file__).parent / "data" / "sector_reference.json"
REFERENCE_SECTORS = json.loads(REFERENCE.read_text())["sectors"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / (a | b).sum())


def add_scanner_ui(image: np.ndarray, keep: np.ndarray, seed: int = 0) -> np.ndarray:
    """Burn scanner-like graphics into the frame, only where ``keep`` is 0.

    A header band with text, a text column, a grey-scale bar with tick marks, a
    logo box and caliper crosses: what real exports carry outside the image.
    """
    rng = np.random.default_rng(seed)
    h, w = image.shape
    ui = np.zeros_like(image)
    cv2.rectangle(ui, (w // 5, 4), (4 * w // 5, 22), 48, -1)                    # header band
    cv2.putText(ui, "AB2-7-D/OB  MI 0.9  12.0cm/1.9/49Hz", (w // 5 + 6, 18), cv2.FONT_HERSHEY_SIMPLEX,
                0.42, 230, 1, cv2.LINE_AA)
    for k, line in enumerate(["Routine", "Har-mid", "Pwr 89 %", "Gn -1", "C6 / M7", "P3 / E3", "SRI II 3"]):
        cv2.putText(ui, line, (w - 95, 45 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 200, 1, cv2.LINE_AA)
    ui[60:220, 6:16] = np.linspace(255, 0, 160).astype(np.uint8)[:, None]         # grey-scale bar
    for y in range(60, h - 20, 38):                                                # depth ticks
        ui[y:y + 2, 22:30] = 220
    cv2.rectangle(ui, (8, 4), (60, 40), 90, 1)                                     # logo box
    cv2.putText(ui, "GE", (20, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 2, cv2.LINE_AA)
    for _ in range(3):                                                             # stray calipers
        x, y = int(rng.uniform(30, w - 30)), int(rng.uniform(30, h - 30))
        cv2.drawMarker(ui, (x, y), 255, cv2.MARKER_CROSS, 10, 1)
    out = image.copy()
    outside = keep == 0
    out[outside] = ui[outside]
    return out


@pytest.fixture(scope="module")
def phantoms():
    return [head_phantom(seed=s) for s in (1, 5)]


# --------------------------------------------------------------------------- rendering


def test_fan_rasteriser_matches_the_phantoms_exact_fan():
    rng = np.random.default_rng(0)
    for _ in range(5):
        apex = (rng.uniform(300, 500), rng.uniform(-500, -100))
        r0, r1, half = rng.uniform(150, 400), rng.uniform(700, 1000), rng.uniform(25, 45)
        exact = sector_mask((540, 800), apex, r0, r1, half)
        drawn = sector_mask_from_geometry((540, 800), apex, r0, r1, -half, half)
        assert iou(exact, drawn) > 0.998
        # Disagreements are boundary pixels only: none survives an erosion of either mask.
        disagree = (exact != drawn)
        inner = cv2.erode(exact, np.ones((3, 3), np.uint8)) & cv2.erode(drawn, np.ones((3, 3), np.uint8))
        assert not (disagree & (inner > 0)).any()


def test_window_cuts_the_fan_and_rect_mask_uses_pixel_centres():
    fan = sector_mask_from_geometry((100, 100), (50, -100), 100, 300, -40, 40)
    cut = sector_mask_from_geometry((100, 100), (50, -100), 100, 300, -40, 40, window_xyxy=(-0.5, 20.5, 80.5, 99.5))
    assert fan[:21].any() and not cut[:21].any() and not cut[:, 81:].any()
    assert np.array_equal(cut[21:, :81], fan[21:, :81])
    box = rect_mask((10, 10), (1.5, 2.5, 4.5, 7.5))
    assert box.sum() == 3 * 5 and box[3, 2] == 1 and box[2, 2] == 0 and box[3, 5] == 0


def test_description_round_trip_and_redraw_at_other_sizes(phantoms):
    s = detect_sector(phantoms[0].image)
    d = json.loads(json.dumps(s.as_dict()))  # what a CLI would write
    assert np.array_equal(mask_from_description(d), s.mask)
    half = mask_from_description(d, (270, 400))
    assert iou(half, cv2.resize(s.mask, (400, 270), interpolation=cv2.INTER_NEAREST)) > 0.99
    assert np.array_equal(s.mask_at((270, 400)), half)
    # Different x and y factors: no longer a fan, still the same region.
    squeezed = mask_from_description(d, (540, 400))
    assert iou(squeezed, cv2.resize(s.mask, (400, 540), interpolation=cv2.INTER_NEAREST)) > 0.99


# --------------------------------------------------------------------------- generated frames


def test_phantom_fan_with_scanner_graphics_outside(phantoms):
    for k, p in enumerate(phantoms):
        framed = add_scanner_ui(p.image, p.sector, seed=k)
        s = detect_sector(framed)
        assert s.kind == "fan"
        assert iou(s.mask, p.sector) >= 0.97
        assert s.mask.shape == p.image.shape and s.mask.dtype == np.uint8 and set(np.unique(s.mask)) <= {0, 1}
        x, y, w, h = s.bbox_xywh
        assert s.mask[y:y + h, x:x + w].sum() == s.mask.sum()
        # Symmetric fan from the phantom: apex near the frame's vertical middle, above it.
        assert abs(s.angle_min_deg + s.angle_max_deg) < 1.0 and s.apex_xy[1] < 0


def test_colour_frame_and_small_frame_give_the_same_fan(phantoms):
    p = phantoms[1]
    grey = detect_sector(p.image)
    colour = detect_sector(cv2.cvtColor(p.image, cv2.COLOR_GRAY2BGR))
    assert np.array_equal(grey.mask, colour.mask)
    small = head_phantom(seed=2, shape_hw=(270, 400))
    assert iou(detect_sector(small.image).mask, small.sector) >= 0.97


def linear_probe_frame(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A linear-probe frame: speckle-like texture in a rectangle, scanner graphics around it."""
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    truth = np.zeros((h, w), np.uint8)
    truth[60:450, 150:520] = 1
    speckle = rng.rayleigh(1.0, (h, w)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=2.0, sigmaY=0.8)
    depth = np.linspace(1.0, 0.6, h, dtype=np.float32)[:, None]
    image = np.clip(70 * speckle * depth + 5, 1, 255).astype(np.uint8)
    image = add_scanner_ui(image * truth, truth, seed)
    return image, truth


def test_linear_probe_rectangle():
    image, truth = linear_probe_frame()
    s = detect_sector(image)
    assert s.kind == "rect"
    assert iou(s.mask, truth) >= 0.97
    assert s.apex_xy is None and s.window_xyxy is not None


def test_clip_sector_from_several_frames(phantoms):
    # Same probe geometry, different content: the fan of every frame is the same.
    p = phantoms[0]
    frames = [np.roll(p.image, k * 7, axis=1) * p.sector for k in range(4)]
    s = detect_sector_in_frames(frames)
    assert iou(s.mask, p.sector) >= 0.97


def test_blank_text_only_and_tiny_frames_are_refused():
    with pytest.raises(InputError, match="no ultrasound sector"):
        detect_sector(np.zeros((540, 800), np.uint8))
    text = np.zeros((540, 800), np.uint8)
    for k in range(20):
        cv2.putText(text, "Patient 0123  GA 20w3d  12.0cm  MI 0.9", (20, 25 + 25 * k),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1, cv2.LINE_AA)
    with pytest.raises(InputError, match="scan_017.png: no ultrasound sector"):
        detect_sector(text, source="scan_017.png")
    with pytest.raises(InputError, match="smaller than 32"):
        detect_sector(np.full((20, 20), 128, np.uint8))
    with pytest.raises(InputError, match="8-bit"):
        detect_sector(np.zeros((100, 100), np.float32))


def test_overlay_and_crop(phantoms):
    p = phantoms[0]
    s = detect_sector(p.image)
    over = draw_sector_overlay(p.image, s)
    assert over.shape == (540, 800, 3) and over.dtype == np.uint8
    # Away from the outline, the outside is dimmed by half and the inside untouched.
    far_out = cv2.dilate(s.mask, np.ones((7, 7), np.uint8)) == 0
    far_in = cv2.erode(s.mask, np.ones((7, 7), np.uint8)) > 0
    for m in (far_out, far_in):  # the caption, and the outline along the frame border
        m[-40:], m[:3], m[:, :3], m[:, -3:] = False, False, False, False
    grey = cv2.cvtColor(p.image, cv2.COLOR_GRAY2BGR)
    assert np.abs(over[far_out].astype(int) - grey[far_out] // 2).max() <= 1
    assert np.array_equal(over[far_in], grey[far_in])
    crop = crop_to_sector(p.image, s)
    x, y, w, h = s.bbox_xywh
    assert crop.shape == (h, w) and (crop[s.mask[y:y + h, x:x + w] == 0] == 0).all()
    assert isinstance(s, Sector) and s.shape_hw == (540, 800)


# --------------------------------------------------------------------------- real frames


@pytest.mark.parametrize("ref", REFERENCE_SECTORS, ids=[r["file"].split("/")[-1] for r in REFERENCE_SECTORS])
def test_hand_checked_reference_sectors(ref):
    folder = need_dataset(ref["dataset"])
    image = read_gray(folder / ref["file"])
    assert list(image.shape) == ref["shape_hw"]
    s = detect_sector(image, source=ref["file"])
    assert s.kind == ref["kind"]
    assert iou(s.mask, mask_from_description(ref)) >= 0.95


# --------------------------------------------------------------------------- imaged box (masking's region)


def test_imaged_box_holds_the_fan_and_leaves_the_screen_graphics_out(phantoms):
    from fetalkit.preprocess.sector import IMAGED_BOX_MARGIN, imaged_box
    from fetalkit.synth.sequences import on_wide_screen
    p = phantoms[0]
    screen, ox = on_wide_screen(p.image, 1.8)
    fan_mask, _ = on_wide_screen(p.sector, 1.8)
    screen = add_scanner_ui(screen, fan_mask)              # header, text, grey-scale bar, logo, ticks
    ys, xs = np.nonzero(fan_mask)
    fan = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    screen[p.image.shape[0] // 2, :] = 255                 # a crosshair line across the whole screen
    x1, y1, x2, y2 = imaged_box(screen)
    h, w = screen.shape
    slack_x, slack_y = IMAGED_BOX_MARGIN * w + 8, IMAGED_BOX_MARGIN * h + 8   # margin + one grid step
    assert x1 <= fan[0] and y1 <= fan[1] and x2 >= fan[2] and y2 >= fan[3]   # the whole fan
    assert x1 >= fan[0] - slack_x and x2 <= fan[2] + slack_x                  # not the graphics beside it
    assert y1 >= fan[1] - slack_y or y1 == 0
    assert imaged_box(np.zeros((120, 200), np.uint8)) is None
