"""The chip's DVS input stage, vectorised: DVS events -> (channel, y, x) entering layer 0."""

from __future__ import annotations

import numpy as np
from chiploop.spec import InputLayer


def map_input(inp: InputLayer, events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(c, y, x, kept) for DVS events, following InputLayer's order of operations.

    Pool (integer division), crop to the window (half-open, pooled coordinates;
    ``kept`` is False for events outside it, which the chip drops and counts),
    flip inside the window, then merge polarities (channel 0) or channel = p.
    c, y, x are int32 and meaningful only where kept.
    """
    pool_y, pool_x = inp.pool
    y0, y1, x0, x1 = inp.window
    y = events["y"].astype(np.int32) // pool_y
    x = events["x"].astype(np.int32) // pool_x
    kept = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
    y -= y0
    x -= x0
    if inp.flip_y:
        y = (y1 - y0 - 1) - y
    if inp.flip_x:
        x = (x1 - x0 - 1) - x
    if inp.merge_polarities:
        c = np.zeros(len(events), np.int32)
    else:
        c = events["p"].astype(np.int32)
    return c, y, x, kept
