"""The Numba functions behind :mod:`engine.compiled` (imported only once Numba is known to be
installed; :func:`engine.compiled.warm_up` compiles them with their signatures).

Each kernel works on a C-contiguous 5-D chunk ``(n, t, h, w, c)``, one output row
``(b, ot, oh)`` at a time: a row is ``out_w * c`` outputs, contiguous in memory and in the bit
planes. Per window offset, the work on a row is a set of *runs* handed to a small helper whose
loop LLVM vectorizes: one contiguous run of ``c`` channels per output column when ``c > 1``,
one run along ``w`` (strided by the stride) when ``c == 1``. Numba compiles each helper once
per array layout, so a contiguous run never pays for the strided case.

Bit planes: bit ``i`` of a chunk's plane is its flat output index ``i``, most significant bit
first (``np.packbits``). A row starts at bit ``row * length``, ``shift`` bits into byte
``first_byte``; rows sharing a byte are ORed in. Winner flags of one row and one offset go to a
byte scratch and are packed 8 at a time by one multiplication (Numba runs on little-endian
hosts only, which the word trick assumes); backward unpacks the bytes it needs through a
byte -> 8-byte table. Scratch is a few bytes per output of one row, whatever the window.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

#: Packs the 0/1 bytes b0..b7 of a little-endian uint64 word into one byte, b0 as its highest
#: bit: the product puts b_j at bit 63 - j, and every other term lands below bit 56 or above 63.
_PACK = np.uint64(0x8040201008040201)
_TOP_BYTE = np.uint64(56)

#: Byte -> its 8 bits as bytes 0x00 / 0xFF, in np.unpackbits' order: int8 0 / -1 masks.
_UNPACK = (np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1) * 255).view(np.uint64)

# Helpers: compiled per argument types into the kernels that call them. boundscheck off (the
# runs stay within the geometry the caller checked), fastmath off (bit-exactness with NumPy).
_helper = numba.njit(
    nogil=True, boundscheck=False, fastmath=False, error_model="numpy", inline="always"
)


@_helper
def _better(xs: Any, bs: Any, count: int, is_max: bool) -> None:  # pragma: no cover - compiled
    """``bs = max(bs, xs)`` (or min) over ``count`` elements; NaN sticks, as with np.maximum."""
    if is_max:
        for j in range(count):
            v, kept = xs[j], bs[j]
            bs[j] = v if (v > kept) | (v != v) else kept
    else:
        for j in range(count):
            v, kept = xs[j], bs[j]
            bs[j] = v if (v < kept) | (v != v) else kept


@_helper
def _flag(
    xs: Any, bs: Any, hits: Any, taken: Any, count: int
) -> None:  # pragma: no cover - compiled
    """``hits = xs == bs`` as 0/1 bytes (NaN equals nothing: a NaN window has no winners);
    ``taken`` is :func:`_flag_first`'s."""
    one, zero = np.uint8(1), np.uint8(0)
    for j in range(count):
        hits[j] = one if xs[j] == bs[j] else zero


@_helper
def _flag_first(
    xs: Any, bs: Any, hits: Any, taken: Any, count: int
) -> None:  # pragma: no cover - compiled
    """As :func:`_flag`, only where no earlier offset of the window won (``taken``, updated)."""
    one, zero = np.uint8(1), np.uint8(0)
    for j in range(count):
        hit = xs[j] == bs[j] and not taken[j]
        taken[j] = taken[j] or hit
        hits[j] = one if hit else zero


@_helper
def _select(gs: Any, masks: Any, out: Any, count: int) -> None:  # pragma: no cover - compiled
    """``out = gs & masks`` (int8 0 / -1 sign-extended): a bitwise select, so inf and NaN in
    the gradient reach winners only."""
    for j in range(count):
        out[j] = gs[j] & masks[j]


@_helper
def _gather(
    gs: Any, masks: Any, totals: Any, count: int, assign: bool, zero: Any
) -> None:  # pragma: no cover - compiled
    """Winners' ``gs`` (+0.0 from losers) into ``totals``: assigned (keeping a -0.0) for the
    stride phase's first offset, as NumPy's phase buffer does, added for the others."""
    if assign:
        for j in range(count):
            totals[j] = gs[j] if masks[j] != 0 else zero
    else:
        for j in range(count):
            totals[j] += gs[j] if masks[j] != 0 else zero


@_helper
def _mark_row(
    X: Any,
    b: int,
    ot: int,
    oh: int,
    best: Any,
    hit_words: Any,
    taken: Any,
    winners: Any,
    geometry: Any,
    reach: Any,
    start: int,
    flag: Any,
) -> None:  # pragma: no cover - compiled
    """The winner bits of output row ``(b, ot, oh)`` (pooled values ``best``, first bit
    ``start``), flagged by ``flag`` (:func:`_flag` or :func:`_flag_first`) and ORed in."""
    channels = X.shape[4]
    pool_t, stride_t, before_t, _ = geometry[0]
    pool_h, stride_h, before_h, _ = geometry[1]
    pool_w, stride_w, before_w, out_w = geometry[2]
    length = out_w * channels
    hits = hit_words.view(np.uint8)
    shift, first_byte = start & 7, start >> 3
    for kt in range(pool_t):
        if not reach[0, kt, 0] <= ot < reach[0, kt, 1]:
            continue
        for kh in range(pool_h):
            if not reach[1, kh, 0] <= oh < reach[1, kh, 1]:
                continue
            x = X[b, ot * stride_t + kt - before_t, oh * stride_h + kh - before_h]
            for kw in range(pool_w):
                lo, hi = reach[2, kw, 0], reach[2, kw, 1]
                if lo == hi:
                    continue
                # Padding never wins: flags outside [lo, hi) stay 0.
                hits[: shift + lo * channels] = 0
                hits[shift + hi * channels :] = 0
                w0 = lo * stride_w + kw - before_w
                if stride_w == 1:
                    at, span = lo * channels, (hi - lo) * channels
                    xs = x.reshape(x.size)[w0 * channels :]
                    flag(xs, best[at:], hits[shift + at :], taken[at:], span)
                elif channels > 1:
                    for ow in range(lo, hi):
                        at = ow * channels
                        xs = x[w0 + (ow - lo) * stride_w]
                        flag(xs, best[at:], hits[shift + at :], taken[at:], channels)
                else:
                    xs1 = x[w0 : w0 + (hi - lo - 1) * stride_w + 1 : stride_w, 0]
                    flag(xs1, best[lo:], hits[shift + lo :], taken[lo:], hi - lo)
                plane = winners[(kt * pool_h + kh) * pool_w + kw]
                for i in range((shift + length + 7) >> 3):
                    plane[first_byte + i] |= np.uint8((hit_words[i] * _PACK) >> _TOP_BYTE)


def forward(
    X: Any, A: Any, winners: Any, geometry: Any, reach: Any, is_max: bool, first_only: bool
) -> None:  # pragma: no cover - compiled
    """max/min of every window into ``A`` and its winner bits ORed into ``winners``."""
    n = X.shape[0]
    channels = X.shape[4]
    pool_t, stride_t, before_t, out_t = geometry[0]
    pool_h, stride_h, before_h, out_h = geometry[1]
    pool_w, stride_w, before_w, out_w = geometry[2]
    length = out_w * channels
    best = np.empty(length, dtype=X.dtype)
    taken = np.zeros(length, dtype=np.bool_)
    hit_words = np.zeros((length >> 3) + 3, dtype=np.uint64)
    # Every window holds a real element, so the identity never survives.
    identity = -np.inf if is_max else np.inf
    row = 0
    for b in range(n):
        for ot in range(out_t):
            for oh in range(out_h):
                best[:] = identity
                for kt in range(pool_t):
                    if not reach[0, kt, 0] <= ot < reach[0, kt, 1]:
                        continue
                    for kh in range(pool_h):
                        if not reach[1, kh, 0] <= oh < reach[1, kh, 1]:
                            continue
                        x = X[b, ot * stride_t + kt - before_t, oh * stride_h + kh - before_h]
                        for kw in range(pool_w):
                            lo, hi = reach[2, kw, 0], reach[2, kw, 1]
                            if lo == hi:
                                continue
                            w0 = lo * stride_w + kw - before_w
                            if stride_w == 1:
                                at, span = lo * channels, (hi - lo) * channels
                                xs = x.reshape(x.size)[w0 * channels :]
                                _better(xs, best[at:], span, is_max)
                            elif channels > 1:
                                for ow in range(lo, hi):
                                    at = ow * channels
                                    xs = x[w0 + (ow - lo) * stride_w]
                                    _better(xs, best[at:], channels, is_max)
                            else:
                                xs1 = x[w0 : w0 + (hi - lo - 1) * stride_w + 1 : stride_w, 0]
                                _better(xs1, best[lo:hi], hi - lo, is_max)
                A[b, ot, oh] = best.reshape(out_w, channels)
                start = row * length
                # One inlined copy per tie rule: a ties test in the loop kept it scalar.
                if first_only:
                    taken[:] = False
                    _mark_row(
                        X,
                        b,
                        ot,
                        oh,
                        best,
                        hit_words,
                        taken,
                        winners,
                        geometry,
                        reach,
                        start,
                        _flag_first,
                    )
                else:
                    _mark_row(
                        X, b, ot, oh, best, hit_words, taken, winners, geometry, reach, start, _flag
                    )
                row += 1


def backward_disjoint(
    G: Any, winners: Any, dX: Any, geometry: Any, reach: Any
) -> None:  # pragma: no cover - compiled
    """Disjoint windows: each winner's gradient bits copied to its input element, once."""
    n, out_t, out_h, out_w, channels = G.shape
    pool_t, stride_t, before_t, _ = geometry[0]
    pool_h, stride_h, before_h, _ = geometry[1]
    pool_w, stride_w, before_w, _ = geometry[2]
    length = out_w * channels
    mask_words = np.zeros((length >> 3) + 3, dtype=np.uint64)
    masks = mask_words.view(np.int8)
    row = 0
    for b in range(n):
        for ot in range(out_t):
            for oh in range(out_h):
                start = row * length
                shift, first_byte = start & 7, start >> 3
                g = G[b, ot, oh]
                for kt in range(pool_t):
                    if not reach[0, kt, 0] <= ot < reach[0, kt, 1]:
                        continue
                    for kh in range(pool_h):
                        if not reach[1, kh, 0] <= oh < reach[1, kh, 1]:
                            continue
                        dx = dX[b, ot * stride_t + kt - before_t, oh * stride_h + kh - before_h]
                        for kw in range(pool_w):
                            lo, hi = reach[2, kw, 0], reach[2, kw, 1]
                            if lo == hi:
                                continue
                            plane = winners[(kt * pool_h + kh) * pool_w + kw]
                            stop = (shift + hi * channels + 7) >> 3
                            for i in range((shift + lo * channels) >> 3, stop):
                                mask_words[i] = _UNPACK[plane[first_byte + i], 0]
                            w0 = lo * stride_w + kw - before_w
                            if channels > 1:
                                for ow in range(lo, hi):
                                    at = shift + ow * channels
                                    dxs = dx[w0 + (ow - lo) * stride_w]
                                    _select(g[ow], masks[at:], dxs, channels)
                            else:
                                dxs1 = dx[w0 : w0 + (hi - lo - 1) * stride_w + 1 : stride_w, 0]
                                _select(g[lo:, 0], masks[shift + lo :], dxs1, hi - lo)
                row += 1


def backward_gather(
    G: Any, winners: Any, dX: Any, geometry: Any, reach: Any, firsts: Any
) -> None:  # pragma: no cover - compiled
    """Overlapping windows: each input row gathers its windows' contributions in row-major
    window-offset order, as NumPy's phase buffers sum them."""
    n, size_t, size_h, size_w, channels = dX.shape
    pool_t, stride_t, before_t, out_t = geometry[0]
    pool_h, stride_h, before_h, out_h = geometry[1]
    pool_w, stride_w, before_w, out_w = geometry[2]
    length = out_w * channels
    mask_words = np.zeros((length >> 3) + 3, dtype=np.uint64)
    masks = mask_words.view(np.int8)
    totals = np.empty((size_w, channels), dtype=G.dtype)
    zero = np.zeros(1, dtype=G.dtype)[0]
    for b in range(n):
        for t in range(size_t):
            for h in range(size_h):
                totals[:] = 0
                for kt in range((t + before_t) % stride_t, pool_t, stride_t):
                    ot = (t + before_t - kt) // stride_t
                    if ot < 0 or ot >= out_t:
                        continue
                    for kh in range((h + before_h) % stride_h, pool_h, stride_h):
                        oh = (h + before_h - kh) // stride_h
                        if oh < 0 or oh >= out_h:
                            continue
                        start = ((b * out_t + ot) * out_h + oh) * length
                        shift, first_byte = start & 7, start >> 3
                        g = G[b, ot, oh]
                        for kw in range(pool_w):
                            lo, hi = reach[2, kw, 0], reach[2, kw, 1]
                            if lo == hi:
                                continue
                            plane = winners[(kt * pool_h + kh) * pool_w + kw]
                            stop = (shift + hi * channels + 7) >> 3
                            for i in range((shift + lo * channels) >> 3, stop):
                                mask_words[i] = _UNPACK[plane[first_byte + i], 0]
                            assign = firsts[0, kt] and firsts[1, kh] and firsts[2, kw]
                            w0 = lo * stride_w + kw - before_w
                            if stride_w == 1:
                                at, span = shift + lo * channels, (hi - lo) * channels
                                ts = totals.reshape(totals.size)[w0 * channels :]
                                _gather(
                                    g.reshape(g.size)[lo * channels :],
                                    masks[at:],
                                    ts,
                                    span,
                                    assign,
                                    zero,
                                )
                            elif channels > 1:
                                for ow in range(lo, hi):
                                    at = shift + ow * channels
                                    ts = totals[w0 + (ow - lo) * stride_w]
                                    _gather(g[ow], masks[at:], ts, channels, assign, zero)
                            else:
                                ts1 = totals[w0 : w0 + (hi - lo - 1) * stride_w + 1 : stride_w, 0]
                                _gather(g[lo:, 0], masks[shift + lo :], ts1, hi - lo, assign, zero)
                dX[b, t, h] = totals
