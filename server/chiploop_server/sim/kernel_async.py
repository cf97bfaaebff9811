"""The event-driven kernel: one sample (or one stream chunk) through the chip, compiled with numba.

Pending work is a buffer of deliveries (layer, channel, y, x, time) packed into
one int64 key plus a time. Depth-first pops the newest delivery (a stack; a
layer's spikes are pushed in reverse so the first spike's whole cascade runs
first), breadth-first pops the oldest (a FIFO). A leak tick is a delivery with
the channel TICK. Everything runs with the GIL released, so samples run in
parallel threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from chiploop_server.sim.network import (
    DEST0,
    HAS_LEAK,
    HP,
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
    WP,
    F,
    H,
    W,
)

#: A time later than any event (ticks of layers without a leak are scheduled here).
NEVER = np.int64(1) << np.int64(62)
#: The channel of a delivery that is a leak tick of its layer.
TICK = 2047


@njit(cache=True, nogil=True, inline="always")
def pack(layer, c, y, x):
    """(layer, channel, y, x) -> one int64 (channel up to 2047, y and x up to 127)."""
    return ((np.int64(layer) * 2048 + c) * 128 + y) * 128 + x


@njit(cache=True, nogil=True, inline="always")
def receptive_range(a, k, s, size):
    """The output positions o (0 <= o < size) whose receptive field holds padded input
    position a along one axis: 0 <= a - o*s < k. Returns (lo, hi); empty when lo > hi."""
    if s == 1:  # no division at stride 1, the common case
        return max(np.int64(0), a - k + 1), min(size - 1, a)
    return max(np.int64(0), -((k - 1 - a) // s)), min(size - 1, a // s)


@njit(cache=True, nogil=True)
def _grow(a, need):
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True, nogil=True, inline="always")
def _update_neurons(state, sb, addend, ab, f, thr, low, zero, flags, fb):
    """v += addend, saturate, fire once, reset, clamp low, for f neurons in a row; returns 1 if any fired.

    thr and low are int16: after the saturating add everything stays in int16
    lanes (v - thr cannot wrap where it is kept, since v >= thr > 0 there), which
    lets LLVM vectorise 16 neurons per AVX2 instruction.
    """
    # Views indexed from 0 spare numba's negative-index checks; the reset mode is
    # tested once, outside the loops; the any-fired test is a separate pass.
    sv = state[sb : sb + f]
    av = addend[ab : ab + f]
    fv = flags[fb : fb + f]
    if zero:
        for k in range(f):
            v = np.int16(min(max(np.int32(sv[k]) + np.int32(av[k]), np.int32(-32768)), np.int32(32767)))
            spike = v >= thr
            v = np.int16(0) if spike else v
            sv[k] = v if v > low else low
            fv[k] = np.uint8(spike)
    else:
        for k in range(f):
            v = np.int16(min(max(np.int32(sv[k]) + np.int32(av[k]), np.int32(-32768)), np.int32(32767)))
            spike = v >= thr
            v = np.int16(v - thr) if spike else v
            sv[k] = v if v > low else low
            fv[k] = np.uint8(spike)
    fired = np.uint8(0)
    for k in range(f):
        fired |= fv[k]
    return np.int64(fired)


@njit(cache=True, nogil=True)
def _gather(flags, npos, f, out):
    """The set flags of [npos, f] as keys k * npos + q, sorted: scan order (k, then position).

    Scans 8 flags per word (spikes are rare), then sorts the few keys found.
    """
    total = npos * f
    words = flags.view(np.uint64)
    n = 0
    for i in range((total + 7) // 8):
        if words[i] == 0:
            continue
        for b in range(8):
            idx = i * 8 + b
            if idx < total and flags[idx]:
                out[n] = (idx % f) * npos + idx // f
                n += 1
    if n > 32:
        out[:n] = np.sort(out[:n])
    else:
        for j in range(1, n):  # insertion sort: usually a handful of keys
            key = out[j]
            i = j - 1
            while i >= 0 and out[i] > key:
                out[i + 1] = out[i]
                i -= 1
            out[i + 1] = key
    return n


@njit(cache=True, nogil=True, inline="always")
def event_update(meta, weights, state, layer, c, y, x, flags, spk_k, spk_y, spk_x):
    """One event (c, y, x) into a layer; spikes go to spk_* in scan order (k, oy, ox).

    Returns (spikes, neuron updates).
    """
    f, h, w = meta[layer, F], meta[layer, H], meta[layer, W]
    ky, kx, sy, sx = meta[layer, KY], meta[layer, KX], meta[layer, SY], meta[layer, SX]
    ay = y + meta[layer, PY]
    ax = x + meta[layer, PX]
    oy_lo, oy_hi = receptive_range(ay, ky, sy, h)
    ox_lo, ox_hi = receptive_range(ax, kx, sx, w)
    if oy_lo > oy_hi or ox_lo > ox_hi:
        return 0, 0
    nox = ox_hi - ox_lo + 1
    npos = (oy_hi - oy_lo + 1) * nox
    thr = np.int16(meta[layer, THR])
    low = np.int16(meta[layer, THR_LOW])
    zero = meta[layer, RESET_ZERO] != 0
    w_ofs, s_ofs = meta[layer, W_OFS], meta[layer, S_OFS]
    fired = 0
    p = 0
    for oy in range(oy_lo, oy_hi + 1):
        kyi = ay - oy * sy
        row = w_ofs + (c * ky + kyi) * kx * f  # weights are stored with kx reversed: index kx - 1 - kxi
        sb = s_ofs + (oy * w + ox_lo) * f
        if sx == 1:
            # One run: neurons (oy, ox_lo..ox_hi, :) and their weights are both contiguous.
            wb = row + (kx - 1 - (ax - ox_lo)) * f
            fired |= _update_neurons(state, sb, weights, wb, nox * f, thr, low, zero, flags, p * f)
            p += nox
        else:
            for ox in range(ox_lo, ox_hi + 1):
                wb = row + (kx - 1 - (ax - ox * sx)) * f
                fired |= _update_neurons(state, sb, weights, wb, f, thr, low, zero, flags, p * f)
                sb += f
                p += 1
    n = 0
    if fired:
        n = _gather(flags, npos, f, spk_k)
        for j in range(n):
            q = spk_k[j] % npos
            spk_k[j] = spk_k[j] // npos
            spk_y[j] = oy_lo + q // nox
            spk_x[j] = ox_lo + q % nox
    return n, npos * f


@njit(cache=True, nogil=True)
def tick_update(meta, leaks, state, layer, flags, spk_k, spk_y, spk_x):
    """One leak tick of a layer (v += leak[k] on every neuron); spikes in scan order. Returns spikes."""
    f, h, w = meta[layer, F], meta[layer, H], meta[layer, W]
    thr = np.int16(meta[layer, THR])
    low = np.int16(meta[layer, THR_LOW])
    zero = meta[layer, RESET_ZERO] != 0
    s_ofs, l_ofs = meta[layer, S_OFS], meta[layer, L_OFS]
    lk = leaks[l_ofs : l_ofs + f]
    fired = 0
    for q in range(h * w):
        fired |= _update_neurons(state, s_ofs + q * f, lk, 0, f, thr, low, zero, flags, q * f)
    n = 0
    if fired:
        npos = h * w
        n = _gather(flags, npos, f, spk_k)
        for j in range(n):
            q = spk_k[j] % npos
            spk_k[j] = spk_k[j] // npos
            spk_y[j] = q // w
            spk_x[j] = q % w
    return n


@njit(cache=True, nogil=True, inline="always")
def _drain(
    meta, weights, leaks, state, keys, times, hi, breadth_first, hop, t0, bin_us, num_bins, spatial,
    cnt_ofs, counts, layer_spikes, out_key, out_t, n_out, flags, spk_k, spk_y, spk_x, spike_budget,
):
    """Run the pending deliveries keys[:hi] and everything they cause, to the end.

    Stops early once more than spike_budget spikes were emitted (a runaway
    network); returns the spikes emitted with the other outputs.
    """
    lo = 0
    synops = 0
    emitted = 0
    t_end = t0 + bin_us * num_bins
    while hi > lo:
        if breadth_first:
            key, t = keys[lo], times[lo]
            lo += 1
        else:
            hi -= 1
            key, t = keys[hi], times[hi]
        x = key & 127
        y = (key >> 7) & 127
        c = (key >> 14) & 2047
        layer = key >> 25
        if c == TICK:
            n = tick_update(meta, leaks, state, layer, flags, spk_k, spk_y, spk_x)
        else:
            n, ops = event_update(meta, weights, state, layer, c, y, x, flags, spk_k, spk_y, spk_x)
            synops += ops
        if n == 0:
            continue
        ts = t + hop
        layer_spikes[layer] += n
        emitted += n
        if emitted > spike_budget:
            break
        if meta[layer, RECORDED]:
            if n_out + n > out_key.shape[0]:  # checked here: a call per spike batch costs refcounting
                out_key = _grow(out_key, n_out + n)
                out_t = _grow(out_t, n_out + n)
            f, h, w = meta[layer, F], meta[layer, H], meta[layer, W]
            in_window = t0 <= ts < t_end
            b = (ts - t0) // bin_us
            for j in range(n):
                out_key[n_out] = pack(layer, spk_k[j], spk_y[j], spk_x[j])
                out_t[n_out] = ts
                n_out += 1
                if in_window:
                    if spatial:
                        counts[cnt_ofs[layer] + ((b * f + spk_k[j]) * h + spk_y[j]) * w + spk_x[j]] += 1
                    else:
                        counts[cnt_ofs[layer] + b * f + spk_k[j]] += 1
        nd = meta[layer, NDEST]
        if nd == 0:
            continue
        if hi + n * nd > keys.shape[0] and lo > 0:
            # Breadth-first only: reuse the consumed front of the FIFO before growing it.
            keys[: hi - lo] = keys[lo:hi]
            times[: hi - lo] = times[lo:hi]
            hi -= lo
            lo = 0
        if hi + n * nd > keys.shape[0]:
            keys = _grow(keys, hi + n * nd)
            times = _grow(times, hi + n * nd)
        pool_y, pool_x = meta[layer, POOL_Y], meta[layer, POOL_X]
        hp, wp = meta[layer, HP], meta[layer, WP]
        for jj in range(n):
            j = jj if breadth_first else n - 1 - jj
            py = spk_y[j] // pool_y
            px = spk_x[j] // pool_x
            if py >= hp or px >= wp:
                continue  # the rows/columns a floor pooling cuts off
            for dd in range(nd):
                d = dd if breadth_first else nd - 1 - dd
                keys[hi] = pack(meta[layer, DEST0 + d], spk_k[j], py, px)
                times[hi] = ts
                hi += 1
    return keys, times, out_key, out_t, n_out, synops, emitted


@njit(cache=True, nogil=True)
def run_async(
    meta, weights, leaks, ev_c, ev_y, ev_x, ev_t, breadth_first, hop, t0, bin_us, num_bins, spatial,
    cnt_ofs, mem_ofs, state, next_tick, counts, snaps, first_bin, tick_until, finish, layer_spikes, max_spikes,
):
    """Events (c, y, x, t) of one sample or chunk, time-sorted, through the network.

    state, next_tick, counts, snaps and layer_spikes are updated in place (a
    session keeps them across calls). Before each event, leak ticks with time <=
    its t and bin snapshots with end <= its t run in time order (a snapshot
    first at a tie). After the events, the same for time tick_until; with
    finish, the remaining bins are snapshot. Returns (out_key, out_t, n_out,
    synops, bins snapshot so far, spikes emitted); the run stops early (the
    caller refuses the result) once more than max_spikes spikes were emitted.
    """
    n_layers = meta.shape[0]
    biggest = 1
    for layer in range(n_layers):
        biggest = max(biggest, meta[layer, F] * meta[layer, H] * meta[layer, W])
    flags = np.zeros(biggest + 8 - biggest % 8, np.uint8)  # whole uint64 words for _gather
    spk_k = np.empty(biggest, np.int64)
    spk_y = np.empty(biggest, np.int64)
    spk_x = np.empty(biggest, np.int64)
    keys = np.empty(1024, np.int64)
    times = np.empty(1024, np.int64)
    out_key = np.empty(1024, np.int64)
    out_t = np.empty(1024, np.int64)
    n_out = 0
    synops = 0
    snapping = False
    for layer in range(n_layers):
        if mem_ofs[layer] >= 0:
            snapping = True
    b = first_bin
    spikes = 0
    n_ev = ev_t.shape[0]
    for i in range(n_ev + 1):
        if spikes > max_spikes:
            break
        t = ev_t[i] if i < n_ev else tick_until
        while True:
            tick_at = NEVER
            tick_layer = -1
            for layer in range(n_layers):
                if next_tick[layer] < tick_at:  # strict: the lowest layer wins a tie
                    tick_at = next_tick[layer]
                    tick_layer = layer
            bin_end = t0 + (b + 1) * bin_us if snapping and b < num_bins else NEVER
            if bin_end <= tick_at and bin_end <= t:
                _snapshot(meta, state, mem_ofs, snaps, b)
                b += 1
            elif tick_at <= t:
                next_tick[tick_layer] += meta[tick_layer, LEAK_PERIOD]
                keys[0] = pack(tick_layer, TICK, 0, 0)
                times[0] = tick_at
                keys, times, out_key, out_t, n_out, ops, emitted = _drain(
                    meta, weights, leaks, state, keys, times, 1, breadth_first, hop, t0, bin_us, num_bins,
                    spatial, cnt_ofs, counts, layer_spikes, out_key, out_t, n_out, flags, spk_k, spk_y, spk_x,
                    max_spikes - spikes,
                )
                synops += ops  # the tick itself is no synaptic operation; what its spikes cause is
                spikes += emitted
                if spikes > max_spikes:
                    break
            else:
                break
        if i < n_ev and spikes <= max_spikes:
            keys[0] = pack(0, ev_c[i], ev_y[i], ev_x[i])
            times[0] = t
            keys, times, out_key, out_t, n_out, ops, emitted = _drain(
                meta, weights, leaks, state, keys, times, 1, breadth_first, hop, t0, bin_us, num_bins,
                spatial, cnt_ofs, counts, layer_spikes, out_key, out_t, n_out, flags, spk_k, spk_y, spk_x,
                max_spikes - spikes,
            )
            synops += ops
            spikes += emitted
    if finish and snapping:
        while b < num_bins:
            _snapshot(meta, state, mem_ofs, snaps, b)
            b += 1
    return out_key, out_t, n_out, synops, b, spikes


@njit(cache=True, nogil=True)
def _snapshot(meta, state, mem_ofs, snaps, b):
    """Copy the states of the snapshot layers into bin b (per layer [T, H, W, f])."""
    for layer in range(meta.shape[0]):
        if mem_ofs[layer] < 0:
            continue
        size = meta[layer, F] * meta[layer, H] * meta[layer, W]
        s_ofs = meta[layer, S_OFS]
        dst = mem_ofs[layer] + b * size
        snaps[dst : dst + size] = state[s_ofs : s_ofs + size]


def initial_ticks(meta: np.ndarray) -> np.ndarray:
    """The first tick time of every layer (its period; NEVER for layers without a leak)."""
    return np.where(meta[:, HAS_LEAK] != 0, meta[:, LEAK_PERIOD], NEVER).astype(np.int64)
