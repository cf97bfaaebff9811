"""Where the synchronous model trains: the CPU, or the trainer's GPU.

The chip (the daemon) always works on its own host; only torch moves. Arrays
cross to the device when a batch is built and back (``.cpu()``) for anything
that goes to the chip or to numpy.
"""

from __future__ import annotations

import torch

from chiploop.errors import InvalidArgument


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU torch sees, else the CPU; otherwise a torch device name
    (``cpu``, ``cuda``, ``cuda:1``), refused when torch cannot use it. Apple's ``mps`` is
    refused: it has no float64, which the thresholds are kept in.

    On CUDA, TF32 is switched off: the QAT forward must sum its integer-valued
    products exactly, as the chip does, and TF32 keeps only 10 mantissa bits of
    each operand. cuDNN is asked for its deterministic convolutions, so that a
    seeded run repeats as closely as CUDA allows (as on the CPU, where it repeats
    exactly).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgument("device", f"not a torch device: {name!r} ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgument("device", f"{name!r} asked for, but torch sees no CUDA GPU here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidArgument("device", f"{name!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type != "cpu":
        raise InvalidArgument("device", f"must be auto, cpu or cuda[:N], got {name!r}")
    return device
