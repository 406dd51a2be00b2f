"""Make docs/phantom.png: six phantom heads with their exact HC (python docs/make_phantom_figure.py)."""

from pathlib import Path

import cv2
import numpy as np

from fetalkit.synth.phantom import phantom_series

tiles = []
for p in phantom_series(6, seed=0):
    tile = cv2.resize(p.image, (400, 270), interpolation=cv2.INTER_AREA)
    cv2.putText(tile, f"HC {p.hc_mm:.0f} mm, {p.pixel_mm:.3f} mm/px", (8, 262), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, 255, 1, cv2.LINE_AA)
    tiles.append(tile)
grid = np.vstack([np.hstack(tiles[:3]), np.hstack(tiles[3:])])
out = Path(__file__).with_name("phantom.png")
cv2.imwrite(str(out), grid)
print(out)
