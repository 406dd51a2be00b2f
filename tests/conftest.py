"""Shared fixtures. Tests needing ../shared/data skip cleanly when it is absent."""

from __future__ import annotations

import pytest

from fetalkit.config import dataset_dir


def need_dataset(name: str):
    path = dataset_dir(name)
    if not path.is_dir():
        pytest.skip(f"dataset {name} not found at {path} (set FETALKIT_DATA)")
    return path


@pytest.fixture
def hc18_dir():
    return need_dataset("hc18")
