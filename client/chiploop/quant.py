"""The one quantizer, shared by training (fake-quant) and deployment (export).

Per layer l a scale s_l maps float weights to int8: w_int = clamp(round(w / s_l),
-128, 127); thresholds (int16) are round(theta / s_l), at least 1; leaks round(b / s_l).
A spiking layer is unchanged when its weights, threshold and leak are all
multiplied by one factor, so the integer network *is* the float network with
weights w_int * s_l: the models therefore compute in integer units (weights
w / s_l) and fake-quantization rounds those units, with a straight-through
estimator, so the forward pass of a quantized model is exactly the integer
network the chip receives.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from chiploop.errors import InvalidArgument

WEIGHT_MIN, WEIGHT_MAX = -128, 127
STATE_MIN, STATE_MAX = -32768, 32767

ScaleMode = Literal["max", "percentile"]


def weight_scale(weights: torch.Tensor | np.ndarray, mode: ScaleMode = "max", percentile: float = 99.99) -> float:
    """s = max|w| / 127 ("max": no weight clips) or the percentile of |w| / 127 (outliers clip)."""
    w = np.abs(weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights))
    if mode == "max":
        top = float(w.max()) if w.size else 0.0
    elif mode == "percentile":
        top = float(np.percentile(w, percentile)) if w.size else 0.0
    else:
        raise InvalidArgument("scale_mode", f"must be 'max' or 'percentile', got {mode!r}")
    if not np.isfinite(top):
        raise InvalidArgument("weights", "contain NaN or inf")
    # An all-zero layer still needs a positive scale; any one maps it to zeros.
    return max(top, 1e-12) / WEIGHT_MAX


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """x rounded to whole numbers in value, the identity in gradient (straight-through)."""
    return x + (torch.round(x) - x).detach()


def fake_quant_units(w: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """w / s rounded to the int8 grid, in integer units: value = the int8 weight,
    gradient = d(w / s) inside the int8 range, 0 where the weight clips."""
    return ste_round(torch.clamp(w / scale, WEIGHT_MIN, WEIGHT_MAX))


def fake_quant(w: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """The same, back in float units (value = int8 weight * s), for ANN-style QAT."""
    return fake_quant_units(w, scale) * scale


def _finite(t: torch.Tensor, field: str) -> torch.Tensor:
    # A NaN cast to an integer is undefined (0 on one device, anything on another) and inf
    # clamps to the grid's edge: a diverged model must never reach the chip looking valid.
    if not bool(torch.isfinite(t).all()):
        raise InvalidArgument(field, "contain NaN or inf (did training diverge?); nothing was quantized")
    return t


def quantize_weights(w: torch.Tensor | np.ndarray, scale: float | torch.Tensor, field: str = "weights") -> np.ndarray:
    """The int8 weights the chip receives: the very float32 computation fake_quant_units does,
    so an exported network equals the fake-quantized one bit for bit."""
    # Computed where the weights live (the training device), so it is the forward's own arithmetic.
    t = _finite(torch.as_tensor(w).detach().to(torch.float32), field)
    s = torch.as_tensor(scale, dtype=torch.float32, device=t.device)
    return fake_quant_units(t, s).to(torch.int8).cpu().numpy()


def quantize_threshold(theta: float, scale: float, field: str = "threshold") -> int:
    """int16 threshold_high: round(theta / s), at least 1."""
    if not math.isfinite(float(theta) / scale):
        raise InvalidArgument(field, f"is {theta} / scale {scale}: not a finite number")
    q = round(float(theta) / scale)
    return int(min(max(q, 1), STATE_MAX))


def quantize_threshold_low(theta_low: float, scale: float, threshold_high: int, field: str = "threshold_low") -> int:
    """int16 threshold_low: round(theta_low / s), below threshold_high."""
    if not math.isfinite(float(theta_low) / scale):
        raise InvalidArgument(field, f"is {theta_low} / scale {scale}: not a finite number")
    q = round(float(theta_low) / scale)
    return int(min(max(q, STATE_MIN), threshold_high - 1))


def quantize_leak(leak: torch.Tensor | np.ndarray, scale: float | torch.Tensor, field: str = "leak") -> np.ndarray:
    """int16 per-channel leak (added once per tick): round(b / s), as fake_quant_leak_units does it."""
    t = _finite(torch.as_tensor(leak).detach().to(torch.float32), field)
    s = torch.as_tensor(scale, dtype=torch.float32, device=t.device)
    return fake_quant_leak_units(t, s).to(torch.int16).cpu().numpy()


def fake_quant_leak_units(leak: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    return ste_round(torch.clamp(leak / scale, STATE_MIN, STATE_MAX))
