"""Defaults of the temporal rules, in one place (the hold rule, ``MaskConfig`` and the CLI read them).

Chosen on the validation sequences of ``fetalkit bench video`` (README, Privacy masking):
BBoxHoldSim with a gain-matched SSIM averaged over the imaged area, held while it stays
>= 0.5, the lowest threshold that keeps the false-masked rate within 2 percentage points
both on the square sequences and on the same scans shown on a wide screen (``--wide``).
Kept free of heavy imports so the CLI can read them at start-up.
"""

from __future__ import annotations

RULE = "ssim"               # none | frames (BBoxHold) | ssim (BBoxHoldSim)
HOLD_FRAMES = 10            # BBoxHold: frames a box is kept after the detector loses it
SSIM_THRESHOLD = 0.5        # BBoxHoldSim: hold while SSIM to the box's last detected frame >= this
SSIM_GAIN = True            # scale both frames to one mean brightness first (a fade is not a new view)
SSIM_IMAGED_ONLY = True     # average over the imaged area, not the black surround all frames share
MAX_HOLD_FRAMES = 150       # BBoxHoldSim: longest hold, whatever the SSIM
