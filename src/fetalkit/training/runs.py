"""What every trainer shares: seeding, the device, and the files of a run.

A run folder holds ``config.json``, ``metrics.csv`` + ``metrics.png`` (one row per
epoch), ``best.pt`` (the best epoch by the trainer's selection metric) and ``last.pt``
(model, optimiser, schedule and every random state), so that re-running into the same
folder resumes exactly: an interrupted run ends where an uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rng_holders(augment) -> list:
    """The pipeline and its transforms, depth first (nested compositions hold their own)."""
    if augment is None:
        return []
    return [augment, *[h for t in augment.transforms
                       for h in (_rng_holders(t) if hasattr(t, "transforms") else [t])]]


def augment_state(augment) -> list:
    """Random states of an albumentations pipeline (each transform holds its own generators)."""
    return [(t.random_generator.bit_generator.state, t.py_random.getstate()) for t in _rng_holders(augment)]


def set_augment_state(augment, state: list) -> None:
    for t, (np_state, py_state) in zip(_rng_holders(augment), state):
        t.random_generator.bit_generator.state = np_state
        t.py_random.setstate(py_state)


def plot_metrics(csv_path: Path, png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keys = [k for k in rows[0] if k not in ("epoch", "seconds", "lr")]
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, k in zip(np.atleast_1d(axes), keys):
        ax.plot(epochs, [float(r[k]) for r in rows], marker="o", ms=3)
        ax.set_title(k)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


class RunFiles:
    """The checkpoints and metrics of one run (module docstring).

    Parameters
    ----------
    out_dir : the run folder (created).
    config : the trainer's configuration (stored in both checkpoints).
    select_mode : ``"max"`` or ``"min"``: whether a larger selection score is better.
    The training state it saves and restores: ``model``, ``optimizer``, ``scheduler``,
    the data loader's generator ``loader_rng`` and the augmentation pipeline ``augment``.
    """

    def __init__(self, out_dir: Path, config: dict, select_mode: str, model, optimizer, scheduler,
                 loader_rng: torch.Generator, augment):
        if select_mode not in ("min", "max"):
            raise ValueError(f"select_mode must be min or max, got {select_mode!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path, self.last_path, self.best_path = (self.out_dir / n for n in ("metrics.csv", "last.pt", "best.pt"))
        self.config, self.select_mode = config, select_mode
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loader_rng, self.augment = loader_rng, augment
        self.best = math.inf if select_mode == "min" else -math.inf

    def start(self, resume: bool, device: torch.device, info: dict) -> int:
        """The first epoch to run: after ``last.pt``'s (every state restored) when resuming,
        else 0 (an old ``metrics.csv`` is removed). Writes ``config.json`` with ``info``."""
        start_epoch = 0
        if resume and self.last_path.is_file():
            ck = torch.load(self.last_path, map_location=device, weights_only=False)
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            start_epoch, self.best = ck["epoch"] + 1, ck["best"]
            torch.set_rng_state(ck["torch_rng"])
            self.loader_rng.set_state(ck["loader_rng"])
            set_augment_state(self.augment, ck["aug_rng"])
        elif self.csv_path.exists():
            self.csv_path.unlink()
        (self.out_dir / "config.json").write_text(json.dumps({**self.config, **info}, indent=2))
        return start_epoch

    def end_epoch(self, epoch: int, row: dict, score: float) -> bool:
        """Save ``best.pt`` when ``score`` improved, always ``last.pt``; append ``row`` to the
        metrics (csv and plot). Returns whether the epoch was the best so far."""
        improved = score < self.best if self.select_mode == "min" else score > self.best
        if improved:
            self.best = score
            torch.save({"model": self.model.state_dict(), "epoch": epoch, "config": self.config, "metrics": row},
                       self.best_path)
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "epoch": epoch, "best": self.best,
                    "torch_rng": torch.get_rng_state(), "loader_rng": self.loader_rng.get_state(),
                    "config": self.config, "aug_rng": augment_state(self.augment)}, self.last_path)
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        plot_metrics(self.csv_path, self.out_dir / "metrics.png")
        return improved
