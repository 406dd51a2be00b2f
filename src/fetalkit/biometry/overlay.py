"""Overlay pictures for biometry results."""

from __future__ import annotations

import math

import cv2
import numpy as np

from fetalkit.types import HeadMeasurement

GREEN = (80, 220, 80)
CYAN = (230, 200, 40)
MAGENTA = (220, 80, 220)


def draw_head_overlay(image: np.ndarray, m: HeadMeasurement) -> np.ndarray:
    """BGR picture: the fitted ellipse, its BPD (minor) and OFD (major) axes and the numbers."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    e = m.ellipse
    shift, s = 4, 16
    center = (int(round(e.center_x_px * s)), int(round(e.center_y_px * s)))
    cv2.ellipse(canvas, center, (int(round(e.semi_axis_a_px * s)), int(round(e.semi_axis_b_px * s))),
                e.angle_deg, 0, 360, GREEN, 2, cv2.LINE_AA, shift)
    th = math.radians(e.angle_deg)
    ux, uy = math.cos(th), math.sin(th)          # major axis direction
    for (dx, dy), r, colour in (((ux, uy), e.semi_axis_a_px, CYAN), ((-uy, ux), e.semi_axis_b_px, MAGENTA)):
        p0 = (int(round((e.center_x_px - dx * r) * s)), int(round((e.center_y_px - dy * r) * s)))
        p1 = (int(round((e.center_x_px + dx * r) * s)), int(round((e.center_y_px + dy * r) * s)))
        cv2.line(canvas, p0, p1, colour, 1, cv2.LINE_AA, shift)
    u = m.units
    lines = [(f"HC  {m.hc:.1f} {u}", GREEN), (f"OFD {m.ofd:.1f} {u}", CYAN), (f"BPD {m.bpd:.1f} {u}", MAGENTA)]
    if m.units == "px":
        lines.append(("no pixel size: lengths in pixels", (60, 60, 255)))
    scale = max(0.5, image.shape[1] / 1000)
    for k, (text, colour) in enumerate(lines):
        org = (10, int(28 * scale * (k + 1)) + 4)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return canvas


def draw_refusal(image: np.ndarray, reason: str) -> np.ndarray:
    """BGR picture of an image that was not measured: dimmed, crossed, with the reason on it."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    canvas = (canvas.astype(np.uint16) * 3 // 5).astype(np.uint8)
    h, w = canvas.shape[:2]
    red = (60, 60, 255)
    cv2.line(canvas, (0, 0), (w - 1, h - 1), red, max(1, w // 300), cv2.LINE_AA)
    cv2.line(canvas, (w - 1, 0), (0, h - 1), red, max(1, w // 300), cv2.LINE_AA)
    scale = max(0.45, w / 1100)
    words, lines = reason.split(), [""]
    for word in words:  # wrap to the width of the image
        trial = (lines[-1] + " " + word).strip()
        if lines[-1] and cv2.getTextSize(trial, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > w - 20:
            lines.append(word)
        else:
            lines[-1] = trial
    for k, text in enumerate(lines):
        org = (10, int(26 * scale * (k + 1)) + 4)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, red, 1, cv2.LINE_AA)
    return canvas
