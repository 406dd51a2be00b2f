"""Where fetalkit finds things: data, bundled models."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent  # meaningful for an editable (source) install only
MODELS_DIR = PACKAGE_DIR / "models"


def data_root() -> Path:
    """Root of the shared data: ``$FETALKIT_DATA``, default ``../shared/data`` beside the repo."""
    env = os.environ.get("FETALKIT_DATA")
    if env:
        return Path(env).expanduser()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def dataset_dir(name: str) -> Path:
    """Folder of one dataset under :func:`data_root` (it may not exist)."""
    return data_root() / name
