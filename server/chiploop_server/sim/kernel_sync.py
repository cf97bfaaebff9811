"""The synchronous, time-stepped integer counterpart of the chip (training frameworks' semantics).

Per bin (time step): the bin's input events are summed into a frame; each layer,
in layer order, adds the integer convolution of its input spike counts (plus
leak x ticks in the bin) to v, saturates to int16 once, fires n = v // thr
spikes (subtract reset; reset-to-zero fires one and sets v = 0), clamps at
threshold_low, and its sum-pooled spike counts enter its destinations within
the same step. The convolution is a scatter of the non-zero input counts
(spike frames are sparse), in int64, compiled with numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from chiploop_server.sim.kernel_async import _grow, pack, receptive_range
from chiploop_server.sim.network import (
    DEST0,
    HAS_LEAK,
    HIN,
    HP,
    I_OFS,
    KX,
    KY,
    L_OFS,
    LEAK_PERIOD,
    NDEST,
    POOL_X,
    POOL_Y,
    PX,
    PY,
    RECORDED,
    RESET_ZERO,
    S_OFS,
    SX,
    SY,
    THR,
    THR_LOW,
    W_OFS,
    WIN,
    WP,
    C,
    F,
    H,
    W,
)


@njit(cache=True, nogil=True, inline="always")
def ticks_in(period, start, end):
    """How many ticks m * period (m >= 1) fall in [start, end)."""
    first = -((-max(start, np.int64(1))) // period)  # ceil(max(start, 1) / period)
    last = (end - 1) // period
    return max(np.int64(0), last - first + 1)


@njit(cache=True, nogil=True, inline="always")
def _add_scaled(acc, ab, weights, wb, length, n):
    """acc[ab:ab + length] += n * weights[wb:wb + length] (views: no negative-index checks, vectorised)."""
    av = acc[ab : ab + length]
    wv = weights[wb : wb + length]
    for k in range(length):
        av[k] += n * np.int64(wv[k])


@njit(cache=True, nogil=True)
def _accumulate(meta, weights, frame, layer, acc):
    """acc[(oy, ox, k)] = sum over input sites of count * W (the step's whole input); returns synops."""
    f, h, w = meta[layer, F], meta[layer, H], meta[layer, W]
    c_in, h_in, w_in = meta[layer, C], meta[layer, HIN], meta[layer, WIN]
    ky, kx, sy, sx = meta[layer, KY], meta[layer, KX], meta[layer, SY], meta[layer, SX]
    pad_y, pad_x = meta[layer, PY], meta[layer, PX]
    w_ofs, i_ofs = meta[layer, W_OFS], meta[layer, I_OFS]
    acc[: f * h * w] = 0
    synops = 0
    for c in range(c_in):
        for y in range(h_in):
            for x in range(w_in):
                n = frame[i_ofs + (c * h_in + y) * w_in + x]
                if n == 0:
                    continue
                ay = y + pad_y
                ax = x + pad_x
                oy_lo, oy_hi = receptive_range(ay, ky, sy, h)
                ox_lo, ox_hi = receptive_range(ax, kx, sx, w)
                if oy_lo > oy_hi or ox_lo > ox_hi:
                    continue
                synops += n * (oy_hi - oy_lo + 1) * (ox_hi - ox_lo + 1) * f
                nox = ox_hi - ox_lo + 1
                for oy in range(oy_lo, oy_hi + 1):
                    row = w_ofs + (c * ky + ay - oy * sy) * kx * f  # kx stored reversed
                    ab = (oy * w + ox_lo) * f
                    if sx == 1:  # the row's neurons and their weights are two contiguous runs
                        _add_scaled(acc, ab, weights, row + (kx - 1 - (ax - ox_lo)) * f, nox * f, n)
                    else:
                        for ox in range(ox_lo, ox_hi + 1):
                            _add_scaled(acc, ab, weights, row + (kx - 1 - (ax - ox * sx)) * f, f, n)
                            ab += f
    return synops


@njit(cache=True, nogil=True)
def run_sync(
    meta, weights, leaks, ev_c, ev_y, ev_x, ev_t, t0, bin_us, num_bins, spatial,
    cnt_ofs, mem_ofs, state, counts, snaps, layer_spikes, num_frame, max_spikes,
):
    """One sample's events through num_bins time steps; outputs as run_async's.

    Events outside [t0, t0 + num_bins * bin_us) belong to no step and are not
    used. Output events: one per spike, at its bin's start time, ordered by
    bin, then layer, then scan order (k, oy, ox). Stops early once more than
    max_spikes spikes were emitted; returns (out_key, out_t, n_out, synops, spikes).
    """
    n_layers = meta.shape[0]
    biggest = 1
    for layer in range(n_layers):
        biggest = max(biggest, meta[layer, F] * meta[layer, H] * meta[layer, W])
    acc = np.zeros(biggest, np.int64)
    fired = np.zeros(biggest, np.int64)
    frame = np.zeros(num_frame, np.int64)
    out_key = np.empty(1024, np.int64)
    out_t = np.empty(1024, np.int64)
    n_out = 0
    synops = 0
    spikes = 0
    n_ev = ev_t.shape[0]
    e = 0
    while e < n_ev and ev_t[e] < t0:
        e += 1
    for b in range(num_bins):
        start = t0 + b * bin_us
        end = start + bin_us
        frame[:] = 0
        h0, w0 = meta[0, HIN], meta[0, WIN]
        while e < n_ev and ev_t[e] < end:
            frame[(ev_c[e] * h0 + ev_y[e]) * w0 + ev_x[e]] += 1
            e += 1
        for layer in range(n_layers):
            synops += _accumulate(meta, weights, frame, layer, acc)
            f, h, w = meta[layer, F], meta[layer, H], meta[layer, W]
            thr = meta[layer, THR]
            low = meta[layer, THR_LOW]
            zero = meta[layer, RESET_ZERO] != 0
            s_ofs, l_ofs = meta[layer, S_OFS], meta[layer, L_OFS]
            n_ticks = ticks_in(meta[layer, LEAK_PERIOD], start, end) if meta[layer, HAS_LEAK] else 0
            total = 0
            for q in range(h * w):
                for k in range(f):
                    i = q * f + k
                    v = np.int64(state[s_ofs + i]) + acc[i] + n_ticks * np.int64(leaks[l_ofs + k])
                    v = min(max(v, np.int64(-32768)), np.int64(32767))
                    m = np.int64(0)
                    if v >= thr:
                        if zero:
                            m = np.int64(1)
                            v = np.int64(0)
                        else:
                            m = v // thr
                            v -= m * thr
                    v = max(v, low)
                    state[s_ofs + i] = np.int16(v)
                    fired[i] = m
                    total += m
            if total == 0:
                continue
            layer_spikes[layer] += total
            spikes += total
            if spikes > max_spikes:
                return out_key, out_t, n_out, synops, spikes
            recorded = meta[layer, RECORDED] != 0
            if recorded:
                out_key = _grow(out_key, n_out + total)
                out_t = _grow(out_t, n_out + total)
            nd = meta[layer, NDEST]
            pool_y, pool_x = meta[layer, POOL_Y], meta[layer, POOL_X]
            hp, wp = meta[layer, HP], meta[layer, WP]
            for k in range(f):
                for q in range(h * w):
                    m = fired[q * f + k]
                    if m == 0:
                        continue
                    oy = q // w
                    ox = q % w
                    if recorded:
                        key = pack(layer, k, oy, ox)
                        for _ in range(m):
                            out_key[n_out] = key
                            out_t[n_out] = start
                            n_out += 1
                        if spatial:
                            counts[cnt_ofs[layer] + ((b * f + k) * h + oy) * w + ox] += m
                        else:
                            counts[cnt_ofs[layer] + b * f + k] += m
                    py = oy // pool_y
                    px = ox // pool_x
                    if py >= hp or px >= wp:
                        continue
                    for d in range(nd):
                        dest = meta[layer, DEST0 + d]
                        frame[meta[dest, I_OFS] + (k * hp + py) * wp + px] += m
        for layer in range(n_layers):
            if mem_ofs[layer] >= 0:
                size = meta[layer, F] * meta[layer, H] * meta[layer, W]
                s_ofs = meta[layer, S_OFS]
                dst = mem_ofs[layer] + b * size
                snaps[dst : dst + size] = state[s_ofs : s_ofs + size]
    return out_key, out_t, n_out, synops, spikes
