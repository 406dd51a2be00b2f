"""Summaries of per-image result rows (csv-style dicts of strings)."""

from __future__ import annotations

import math

import numpy as np


def column_values(rows: list[dict], col: str) -> np.ndarray:
    """The non-empty values of a column as floats (may include inf)."""
    return np.array([float(r[col]) for r in rows if r.get(col, "") != ""], dtype=float)


def finite_mean(rows: list[dict], col: str) -> float:
    """Mean of the finite values of a column (NaN when there are none); count the others with :func:`n_nonfinite`."""
    v = column_values(rows, col)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def finite_median(rows: list[dict], col: str) -> float:
    v = column_values(rows, col)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


def n_nonfinite(rows: list[dict], col: str) -> int:
    """How many values of a column are infinite (e.g. a distance to an empty prediction)."""
    return int((~np.isfinite(column_values(rows, col))).sum())
