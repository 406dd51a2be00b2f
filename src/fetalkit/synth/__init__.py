"""Synthetic data: procedural fetal-head ultrasound phantoms with exact ground truth."""

from fetalkit.synth.phantom import HeadPhantom, head_phantom, phantom_series, sector_mask, write_phantom_folder

__all__ = ["HeadPhantom", "head_phantom", "phantom_series", "sector_mask", "write_phantom_folder"]
