"""Evaluation: metric wrappers (MONAI for Dice / Hausdorff) and per-image reports."""
