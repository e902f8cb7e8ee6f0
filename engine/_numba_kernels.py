"""The Numba functions behind :mod:`engine.compiled` (imported only once Numba is known to be
installed; :func:`engine.compiled.warm_up` compiles them with their signatures).

Each kernel works on a C-contiguous 5-D chunk ``(n, t, h, w, c)`` through flat 1-D views, one
output row ``(b, ot, oh)`` at a time: a row is ``out_w * c`` outputs, contiguous in memory and
in the bit planes. Per input row of a window, the work is a set of *spans* handed to small
inlined loops that LLVM vectorizes: one span of ``(hi - lo) * c`` elements when the stride
along ``w`` is 1, one strided span along ``w`` when ``c == 1``, else one span of ``c``
channels per output column.

Two habits keep those loops vectorized (each measured at 5-10x):

- every loop indexes a slice from 0 with its ``range`` counter, never ``array[base + j]``:
  Numba wraps negative indices, and an index LLVM cannot prove non-negative (any sum with a
  computed base) turns the loop into scalar code with a select per access;
- byte flags are stored as bools (``x == best`` straight into the byte): a select to
  ``uint8`` 0/1 ran 2.5x slower for float32.

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

#: Up to this many channels, a strided window offset runs one strided loop per channel rather
#: than a loop over the channels of each output (whose set-up outweighs 3 elements).
_FEW_CHANNELS = 4

# Helpers: compiled per argument types into the kernels that call them. boundscheck off (the
# spans stay within the geometry the caller checked), fastmath off (bit-exactness with NumPy).
_helper = numba.njit(
    nogil=True, boundscheck=False, fastmath=False, error_model="numpy", inline="always"
)


@_helper
def _max_of(v: Any, kept: Any) -> Any:  # pragma: no cover - compiled
    """``max(kept, v)`` as ``np.maximum`` has it: NaN sticks, whichever side it is on."""
    return v if (v > kept) | (v != v) else kept


@_helper
def _min_of(v: Any, kept: Any) -> Any:  # pragma: no cover - compiled
    """``min(kept, v)`` as ``np.minimum`` has it."""
    return v if (v < kept) | (v != v) else kept


@_helper
def _strided(xf: Any, start: int, count: int, stride_w: int) -> Any:  # pragma: no cover - compiled
    """``count`` elements of ``xf`` from ``start``, ``stride_w`` apart (single-channel rows;
    contiguous spans are plain ``xf[start:]``, kept apart so Numba types them as C arrays)."""
    return xf[start : start + (count - 1) * stride_w + 1 : stride_w]


@_helper
def _row_base(
    b: int, ot: int, oh: int, kt: int, kh: int, rows: tuple[int, ...], reach: Any
) -> int:  # pragma: no cover - compiled
    """Flat start of the input row that window offset ``(kt, kh)`` of output row
    ``(b, ot, oh)`` reads, or -1 when that offset lands on padding. ``rows`` is
    :func:`_rows`' tuple (scalars, so nothing is reloaded from memory after each store)."""
    size_t, size_h, row_size, stride_t, before_t, stride_h, before_h = rows
    if not (reach[0, kt, 0] <= ot < reach[0, kt, 1] and reach[1, kh, 0] <= oh < reach[1, kh, 1]):
        return -1
    it = ot * stride_t + kt - before_t
    ih = oh * stride_h + kh - before_h
    return ((b * size_t + it) * size_h + ih) * row_size


@_helper
def _rows(shape: Any, geometry: Any) -> Any:  # pragma: no cover - compiled
    """What :func:`_row_base` needs of a chunk's 5-D ``shape`` and geometry."""
    _, size_t, size_h, size_w, channels = shape
    return (
        size_t,
        size_h,
        size_w * channels,
        geometry[0, 1],
        geometry[0, 2],
        geometry[1, 1],
        geometry[1, 2],
    )


@_helper
def _pool_row(
    xf: Any,
    best: Any,
    base: int,
    lo: int,
    hi: int,
    w: int,
    stride_w: int,
    channels: int,
    better: Any,
) -> None:  # pragma: no cover - compiled
    """One window offset on one input row (flat ``base``, first column ``w``) pooled into
    ``best`` for the outputs ``[lo, hi)`` it reaches."""
    if stride_w == 1:
        xs, bs = xf[base + w * channels :], best[lo * channels :]
        for j in range((hi - lo) * channels):
            bs[j] = better(xs[j], bs[j])
    elif channels == 1:
        xs, bs = _strided(xf, base + w, hi - lo, stride_w), best[lo:]
        for j in range(hi - lo):
            bs[j] = better(xs[j], bs[j])
    elif channels <= _FEW_CHANNELS:
        # One strided run per channel: a span of a few channels per output costs its set-up.
        for c in range(channels):
            xs = _strided(xf, base + w * channels + c, hi - lo, stride_w * channels)
            bs = _strided(best, lo * channels + c, hi - lo, channels)
            for j in range(hi - lo):
                bs[j] = better(xs[j], bs[j])
    else:
        for ow in range(lo, hi):
            xs = xf[base + (w + (ow - lo) * stride_w) * channels :]
            bs = best[ow * channels :]
            for c in range(channels):
                bs[c] = better(xs[c], bs[c])


@_helper
def _flag_span(
    xs: Any, bs: Any, hs: Any, ts: Any, count: int, first_only: bool
) -> None:  # pragma: no cover - compiled
    """``hs = xs == bs`` as bool bytes (NaN equals nothing: a NaN window has no winners); with
    ``first_only``, only where no earlier offset of the window won (``ts``, updated)."""
    if first_only:
        for j in range(count):
            hit = (xs[j] == bs[j]) > ts[j]
            ts[j] = ts[j] | hit
            hs[j] = hit
    else:
        for j in range(count):
            hs[j] = xs[j] == bs[j]


@_helper
def _flag_row(
    xf: Any,
    best: Any,
    hits: Any,
    taken: Any,
    shift: int,
    base: int,
    lo: int,
    hi: int,
    w: int,
    stride_w: int,
    channels: int,
    first_only: bool,
) -> None:  # pragma: no cover - compiled
    """As :func:`_pool_row`, the offset's winner flags into ``hits`` (from bit ``shift``)."""
    if stride_w == 1:
        at = lo * channels
        xs, count = xf[base + w * channels :], (hi - lo) * channels
        _flag_span(xs, best[at:], hits[shift + at :], taken[at:], count, first_only)
    elif channels == 1:
        xs = _strided(xf, base + w, hi - lo, stride_w)
        _flag_span(xs, best[lo:], hits[shift + lo :], taken[lo:], hi - lo, first_only)
    elif channels <= _FEW_CHANNELS:
        for c in range(channels):
            at, count = lo * channels + c, hi - lo
            xs = _strided(xf, base + w * channels + c, count, stride_w * channels)
            bs, ts = _strided(best, at, count, channels), _strided(taken, at, count, channels)
            _flag_span(xs, bs, _strided(hits, shift + at, count, channels), ts, count, first_only)
    else:
        for ow in range(lo, hi):
            at = ow * channels
            xs = xf[base + (w + (ow - lo) * stride_w) * channels :]
            _flag_span(xs, best[at:], hits[shift + at :], taken[at:], channels, first_only)


@_helper
def _forward(
    X: Any,
    A: Any,
    winners: Any,
    geometry: Any,
    reach: Any,
    identity: Any,
    better: Any,
    first_only: bool,
) -> None:  # pragma: no cover - compiled
    n, _, _, size_w, channels = X.shape
    pool_t, out_t = geometry[0, 0], geometry[0, 3]
    pool_h, out_h = geometry[1, 0], geometry[1, 3]
    pool_w, stride_w, before_w, out_w = geometry[2]
    xf = X.reshape(X.size)
    af = A.reshape(A.size)
    length = out_w * channels
    row_size = size_w * channels
    rows = _rows(X.shape, geometry)
    best = np.empty(length, dtype=X.dtype)
    taken = np.zeros(length, dtype=np.bool_)
    hit_words = np.zeros((length >> 3) + 2, dtype=np.uint64)
    hits = hit_words.view(np.bool_)
    # Channels and a stride along w: the window's rows are first pooled column by column (one
    # long loop per row), then along w (one span of c per output and offset): a third of the
    # short spans for a 3x3 window.
    separable = channels > 1 and stride_w > 1 and pool_t * pool_h > 1
    columns = np.empty(row_size if separable else 0, dtype=X.dtype)
    row = 0
    # Two copies of the loops over the window's rows (pool, then flag): one loop body with a
    # pool-or-flag test, even a constant one, ran 10-25% slower.
    for b in range(n):
        for ot in range(out_t):
            for oh in range(out_h):
                best[:] = identity
                if separable:
                    columns[:] = identity
                for kt in range(pool_t):
                    for kh in range(pool_h):
                        base = _row_base(b, ot, oh, kt, kh, rows, reach)
                        if base < 0:
                            continue
                        if separable:
                            xs = xf[base:]
                            for j in range(row_size):
                                columns[j] = better(xs[j], columns[j])
                            continue
                        for kw in range(pool_w):
                            lo, hi = reach[2, kw, 0], reach[2, kw, 1]
                            if lo < hi:
                                w = lo * stride_w + kw - before_w
                                _pool_row(xf, best, base, lo, hi, w, stride_w, channels, better)
                if separable:
                    for kw in range(pool_w):
                        lo, hi = reach[2, kw, 0], reach[2, kw, 1]
                        if lo < hi:
                            w = lo * stride_w + kw - before_w
                            _pool_row(columns, best, 0, lo, hi, w, stride_w, channels, better)
                start = row * length
                af[start : start + length] = best
                shift, first_byte = start & 7, start >> 3
                if first_only:
                    taken[:] = False
                for kt in range(pool_t):
                    for kh in range(pool_h):
                        base = _row_base(b, ot, oh, kt, kh, rows, reach)
                        if base < 0:
                            continue
                        for kw in range(pool_w):
                            lo, hi = reach[2, kw, 0], reach[2, kw, 1]
                            if lo == hi:
                                continue
                            # Padding never wins: flags outside [lo, hi) stay 0.
                            hits[: shift + lo * channels] = False
                            hits[shift + hi * channels :] = False
                            w = lo * stride_w + kw - before_w
                            _flag_row(
                                xf, best, hits, taken, shift, base, lo, hi, w, stride_w,
                                channels, first_only,
                            )  # fmt: skip
                            plane = winners[(kt * pool_h + kh) * pool_w + kw, first_byte:]
                            for i in range((shift + length + 7) >> 3):
                                plane[i] |= np.uint8((hit_words[i] * _PACK) >> _TOP_BYTE)
                row += 1


def forward(
    X: Any, A: Any, winners: Any, geometry: Any, reach: Any, is_max: bool, first_only: bool
) -> None:  # pragma: no cover - compiled
    """max/min of every window into ``A`` and its winner bits ORed into ``winners``: per output
    row, the pooled values over the window's input rows, then the flags of every offset
    against them, from the same rows still in L1. One inlined copy per mode and tie rule: a
    test inside the loops kept them scalar."""
    # Every window holds a real element, so the identity never survives.
    if is_max:
        if first_only:
            _forward(X, A, winners, geometry, reach, -np.inf, _max_of, True)
        else:
            _forward(X, A, winners, geometry, reach, -np.inf, _max_of, False)
    elif first_only:
        _forward(X, A, winners, geometry, reach, np.inf, _min_of, True)
    else:
        _forward(X, A, winners, geometry, reach, np.inf, _min_of, False)


# -- backward ------------------------------------------------------------------------------------


@_helper
def _select(gs: Any, ms: Any, ds: Any, count: int) -> None:  # pragma: no cover - compiled
    """``ds = gs & ms`` (int8 0 / -1 sign-extended): a bitwise select, so inf and NaN in the
    gradient reach winners only."""
    for j in range(count):
        ds[j] = gs[j] & ms[j]


@_helper
def _gather(
    gs: Any, ms: Any, ds: Any, count: int, assign: bool, zero: Any
) -> None:  # pragma: no cover - compiled
    """Winners' ``gs`` (+0.0 from losers) into ``ds``: assigned (keeping a -0.0) for the
    stride phase's first offset, as NumPy's phase buffer does, added for the others."""
    if assign:
        for j in range(count):
            ds[j] = gs[j] if ms[j] != 0 else zero
    else:
        for j in range(count):
            ds[j] += gs[j] if ms[j] != 0 else zero


@_helper
def _unpack_masks(
    plane: Any, mask_words: Any, first_byte: int, begin: int, end: int
) -> None:  # pragma: no cover - compiled
    """The mask bytes of a row's bits ``[begin, end)`` (counted from the row's first byte,
    ``first_byte`` of ``plane``), 8 per table lookup."""
    first = begin >> 3
    packed = plane[first_byte + first :]
    words = mask_words[first:]
    for i in range(((end + 7) >> 3) - first):
        words[i] = _UNPACK[packed[i], 0]


def backward_disjoint(
    G: Any, winners: Any, dX: Any, geometry: Any, reach: Any
) -> None:  # pragma: no cover - compiled
    """Disjoint windows: each winner's gradient bits copied to its input element, once."""
    n, _, _, _, channels = dX.shape
    pool_t, out_t = geometry[0, 0], geometry[0, 3]
    pool_h, out_h = geometry[1, 0], geometry[1, 3]
    pool_w, stride_w, before_w, out_w = geometry[2]
    gf = G.reshape(G.size)
    df = dX.reshape(dX.size)
    length = out_w * channels
    rows = _rows(dX.shape, geometry)
    mask_words = np.zeros((length >> 3) + 3, dtype=np.uint64)
    masks = mask_words.view(np.int8)
    row = 0
    for b in range(n):
        for ot in range(out_t):
            for oh in range(out_h):
                start = row * length
                shift, first_byte = start & 7, start >> 3
                for kt in range(pool_t):
                    for kh in range(pool_h):
                        base = _row_base(b, ot, oh, kt, kh, rows, reach)
                        if base < 0:
                            continue
                        for kw in range(pool_w):
                            lo, hi = reach[2, kw, 0], reach[2, kw, 1]
                            if lo == hi:
                                continue
                            plane = winners[(kt * pool_h + kh) * pool_w + kw]
                            at = lo * channels
                            _unpack_masks(
                                plane, mask_words, first_byte, shift + at, shift + hi * channels
                            )
                            w = lo * stride_w + kw - before_w
                            gs, ms = gf[start + at :], masks[shift + at :]
                            if stride_w == 1:
                                _select(gs, ms, df[base + w * channels :], (hi - lo) * channels)
                                continue
                            if channels == 1:
                                _select(gs, ms, _strided(df, base + w, hi - lo, stride_w), hi - lo)
                                continue
                            for ow in range(lo, hi):
                                at = ow * channels
                                ds = df[base + (w + (ow - lo) * stride_w) * channels :]
                                _select(gf[start + at :], masks[shift + at :], ds, channels)
                row += 1


def backward_gather(
    G: Any, winners: Any, dX: Any, geometry: Any, reach: Any, firsts: Any
) -> None:  # pragma: no cover - compiled
    """Overlapping windows: each input row gathers its windows' contributions in row-major
    window-offset order, as NumPy's phase buffers sum them, straight into dX (which holds
    the accumulation dtype)."""
    n, size_t, size_h, size_w, channels = dX.shape
    pool_t, stride_t, before_t, out_t = geometry[0]
    pool_h, stride_h, before_h, out_h = geometry[1]
    pool_w, stride_w, before_w, out_w = geometry[2]
    gf = G.reshape(G.size)
    df = dX.reshape(dX.size)
    length = out_w * channels
    row_size = size_w * channels
    mask_words = np.zeros((length >> 3) + 3, dtype=np.uint64)
    masks = mask_words.view(np.int8)
    zero = np.zeros(1, dtype=G.dtype)[0]
    base = 0
    for b in range(n):
        for t in range(size_t):
            for h in range(size_h):
                df[base : base + row_size] = zero
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
                        for kw in range(pool_w):
                            lo, hi = reach[2, kw, 0], reach[2, kw, 1]
                            if lo == hi:
                                continue
                            plane = winners[(kt * pool_h + kh) * pool_w + kw]
                            at = lo * channels
                            _unpack_masks(
                                plane, mask_words, first_byte, shift + at, shift + hi * channels
                            )
                            assign = firsts[0, kt] and firsts[1, kh] and firsts[2, kw]
                            w = lo * stride_w + kw - before_w
                            gs, ms = gf[start + at :], masks[shift + at :]
                            if stride_w == 1:
                                ds = df[base + w * channels :]
                                _gather(gs, ms, ds, (hi - lo) * channels, assign, zero)
                                continue
                            if channels == 1:
                                ds = _strided(df, base + w, hi - lo, stride_w)
                                _gather(gs, ms, ds, hi - lo, assign, zero)
                                continue
                            for ow in range(lo, hi):
                                at = ow * channels
                                ds = df[base + (w + (ow - lo) * stride_w) * channels :]
                                gs, ms = gf[start + at :], masks[shift + at :]
                                _gather(gs, ms, ds, channels, assign, zero)
                base += row_size


# -- tiny calls: forward and backward in one call ------------------------------------------------


@_helper
def _tiny_step(
    step: int,
    xf: Any,
    af: Any,
    columns: Any,
    taken: Any,
    plane: Any,
    gf: Any,
    df: Any,
    e: int,
    i: int,
    separable: bool,
    first_only: bool,
    assign: bool,
    zero: Any,
    better: Any,
) -> None:  # pragma: no cover - compiled
    """One pass of :func:`_tiny` on input element ``e`` and output ``i`` of one window
    offset: pool it (into its column first when ``separable``), flag it as a winner, or
    send it the window's gradient."""
    if step == 0:
        if separable:
            columns[i] = better(xf[e], columns[i])
        else:
            af[i] = better(xf[e], af[i])
    elif step == 1:
        # NaN equals nothing: a NaN window has no winners; padding is never visited.
        hit = xf[e] == af[i]
        if first_only:
            hit = hit and not taken[i]
            taken[i] = taken[i] or hit
        if hit:
            plane[i >> 3] |= np.uint8(0x80 >> (i & 7))
    else:
        value = gf[i] if (plane[i >> 3] << (i & 7)) & 0x80 else zero
        if assign:
            df[e] = value
        else:
            df[e] += value


@_helper
def _tiny(
    X: Any,
    A: Any,
    winners: Any,
    G: Any,
    dX: Any,
    table: Any,
    identity: Any,
    better: Any,
    first_only: bool,
    disjoint: bool,
) -> None:  # pragma: no cover - compiled
    n, size_t, size_h, size_w, channels = X.shape
    _, out_t, out_h, out_w, _ = A.shape
    # Scalars, read once: a store into A, the planes or dX could alias the table for LLVM,
    # which would reload it in every inner loop.
    pool_t, stride_t, before_t = table[0, 0, 0], table[0, 0, 1], table[0, 0, 2]
    pool_h, stride_h, before_h = table[1, 0, 0], table[1, 0, 1], table[1, 0, 2]
    pool_w, stride_w, before_w = table[2, 0, 0], table[2, 0, 1], table[2, 0, 2]
    xf, af, gf, df = X.reshape(X.size), A.reshape(A.size), G.reshape(G.size), dX.reshape(dX.size)
    # Per output, each pass visits the window offsets in row-major order (offsets outermost):
    # forward folds them in :func:`_forward`'s order, which decides the NaN and the zero kept
    # among equals; with channels and a stride along w that is each column over (kt, kh)
    # first, then the columns along w.
    separable = channels > 1 and stride_w > 1 and pool_t * pool_h > 1
    af[:] = identity
    columns = np.empty(A.size if separable else 0, dtype=A.dtype)
    taken = np.zeros(A.size if first_only else 0, dtype=np.bool_)
    # Backward (the last pass), offsets outermost too: each input element receives its
    # contributions in row-major window order, as the phase buffers (and the gather kernel)
    # sum them, the first offset of its stride phase assigning (keeping a -0.0), the others
    # adding.
    zero = np.zeros(1, dtype=G.dtype)[0]
    df[:] = zero
    for step in range(3):  # pool, flag the winners, send them the gradient
        for kw_outer in range(pool_w if separable and step == 0 else 1):
            if separable and step == 0:
                columns[:] = identity
            k = -1
            for kt in range(pool_t):
                lo_t, hi_t = table[0, 1 + kt, 0], table[0, 1 + kt, 1]
                for kh in range(pool_h):
                    lo_h, hi_h = table[1, 1 + kh, 0], table[1, 1 + kh, 1]
                    for kw in range(pool_w):
                        k += 1
                        if separable and step == 0 and kw != kw_outer:
                            continue
                        lo_w, hi_w = table[2, 1 + kw, 0], table[2, 1 + kw, 1]
                        firsts = table[0, 1 + kt, 2] & table[1, 1 + kh, 2] & table[2, 1 + kw, 2]
                        assign = disjoint or firsts != 0
                        plane = winners[k]
                        for b in range(n):
                            for ot in range(lo_t, hi_t):
                                it = ot * stride_t + kt - before_t
                                for oh in range(lo_h, hi_h):
                                    ih = oh * stride_h + kh - before_h
                                    for ow in range(lo_w, hi_w):
                                        iw = ow * stride_w + kw - before_w
                                        e = ((b * size_t + it) * size_h + ih) * size_w + iw
                                        e *= channels
                                        i = ((b * out_t + ot) * out_h + oh) * out_w + ow
                                        i *= channels
                                        for c in range(channels):
                                            _tiny_step(
                                                step, xf, af, columns, taken, plane, gf, df,
                                                e + c, i + c, separable, first_only, assign,
                                                zero, better,
                                            )  # fmt: skip
            if separable and step == 0:
                lo_w, hi_w = table[2, 1 + kw_outer, 0], table[2, 1 + kw_outer, 1]
                for b in range(n):
                    for ot in range(out_t):
                        for oh in range(out_h):
                            i = ((b * out_t + ot) * out_h + oh) * out_w
                            for j in range((i + lo_w) * channels, (i + hi_w) * channels):
                                af[j] = better(columns[j], af[j])


def tiny_gradient(
    X: Any, A: Any, winners: Any, G: Any, dX: Any, table: Any, flags: int
) -> None:  # pragma: no cover - compiled
    """:func:`forward` and then the backward kernels' dX in one call, per window and
    element in scalar loops: for a tiny call, where the row kernels' spans cost more to set
    up than their work. ``flags``: bit 0 max (else min), bit 1 ``ties="first"``, bit 2
    disjoint windows (each winner's ``G`` copied, a load and a store that keep its bits,
    float16 passed as its bits; every other element +0), else ``G`` and ``dX`` of the
    accumulation dtype, summed in row-major window order. ``table`` int64
    ``(3, 1 + max pool, 3)``: per 3-D spatial dim, row 0 pool size, stride, padding before;
    row ``1 + k`` offset ``k``'s reach ``[lo, hi)`` and whether it is its stride phase's
    first (the gather kernel's ``firsts``). ``winners`` zeroed by the caller; dX fully
    written."""
    first_only, disjoint = (flags & 2) != 0, (flags & 4) != 0
    if flags & 1:
        _tiny(X, A, winners, G, dX, table, -np.inf, _max_of, first_only, disjoint)
    else:
        _tiny(X, A, winners, G, dX, table, np.inf, _min_of, first_only, disjoint)
