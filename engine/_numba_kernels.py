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

A third keeps the many short spans cheap: no reference counting in the loops. Every slice of
an array Numba owns, and every array handed to an inlined helper, costs an atomic incref and
decref of its memory record; at a few per span they took a third of a forward's time
(perf: ``lock incq``/``lock decq`` in Numba's runtime). Each kernel therefore *borrows* its
arrays once (:func:`_borrow`: the same array without its memory record, so views of it carry
none either), keeps the owners of its scratch arrays alive to its end (:func:`_keep`), and
takes spans with :func:`_tail` and :func:`_every`, which also skip a slice's bounds
arithmetic. Forward, one thread, float32 max, (64, 32, 32, 32) 3x3/2: 1.33 -> 0.74 ms.

Bit planes: bit ``i`` of a chunk's plane is its flat output index ``i``, most significant bit
first (``np.packbits``). A row starts at bit ``row * length``, ``shift`` bits into byte
``first_byte``; rows sharing a byte are ORed in. Winner flags of one row and one offset go to a
byte scratch and are packed 8 at a time by one multiplication (Numba runs on little-endian
hosts only, which the word trick assumes); backward unpacks the bytes it needs through a
byte -> 8-byte table. Scratch is a few bytes per output of one row, whatever the window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic
from numba.np import arrayobj

# Numba's array-struct builders, untyped: called only while Numba generates code.
make_array: Any = arrayobj.make_array
populate_array: Any = arrayobj.populate_array
_null_meminfo: Any = types.MemInfoPointer(types.voidptr)  # type: ignore[no-untyped-call]


def _intrinsic(typing: Callable[..., Any]) -> Any:
    """``numba.extending.intrinsic``, typed for the kernels as what it is to them: a
    function of the arrays and integers they pass."""
    return intrinsic(typing)


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


# -- borrowed arrays and spans (no reference counting) ------------------------------------------


@_intrinsic
def _borrow(typingctx: Any, array: Any) -> Any:  # pragma: no cover - compiled
    """``array`` without its memory record (meminfo and parent NULL): copies and views of it
    skip the atomic incref/decref. Its owner must outlive every use: arguments do (the caller
    holds them), a kernel's own scratch is passed to :func:`_keep` at the kernel's end."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        view = make_array(signature.args[0])(context, builder, value=args[0])
        view.meminfo = context.get_constant_null(_null_meminfo)
        view.parent = context.get_constant_null(types.pyobject)
        return view._getvalue()

    return array(array), codegen


@_intrinsic
def _keep(typingctx: Any, array: Any) -> Any:  # pragma: no cover - compiled
    """A use of ``array`` that does nothing: Numba releases a variable after its last use,
    so the owner of borrowed scratch lives until here."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return context.get_dummy_value()

    return types.none(array), codegen


def _view(
    context: Any, builder: Any, signature: Any, args: Any, count: Any, step: Any
) -> Any:  # pragma: no cover - compiled
    """A 1-D view of ``args[0]`` from element ``args[1]``, with no memory record:
    ``count(source, start)`` elements (the source's array struct and the start, as LLVM
    ``intp``) ``step`` apart (an LLVM ``intp``)."""
    source = make_array(signature.args[0])(context, builder, value=args[0])
    view = make_array(signature.return_type)(context, builder)
    start = context.cast(builder, args[1], signature.args[1], types.intp)
    populate_array(
        view,
        data=builder.gep(source.data, [start]),
        shape=[count(source, start)],
        strides=[builder.mul(step, source.itemsize)],
        itemsize=source.itemsize,
        meminfo=None,
    )
    return view._getvalue()


def _is_vector(array: Any) -> bool:
    return isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"


@_intrinsic
def _tail(typingctx: Any, array: Any, start: Any) -> Any:  # pragma: no cover - compiled
    """``array[start:]`` of a 1-D C array, ``0 <= start <= len(array)`` (unchecked), with
    no memory record."""
    if not (_is_vector(array) and isinstance(start, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        def rest(source: Any, first: Any) -> Any:
            return builder.sub(builder.extract_value(source.shape, 0), first)

        one = context.get_constant(types.intp, 1)
        return _view(context, builder, signature, args, rest, one)

    return array(array, start), codegen


@_intrinsic
def _every(
    typingctx: Any, array: Any, start: Any, count: Any, step: Any
) -> Any:  # pragma: no cover - compiled
    """``array[start : start + (count - 1) * step + 1 : step]`` of a 1-D C array (within
    it, unchecked), with no memory record."""
    if not (_is_vector(array) and all(isinstance(v, types.Integer) for v in (start, count, step))):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        def cast(index: int) -> Any:
            return context.cast(builder, args[index], signature.args[index], types.intp)

        return _view(context, builder, signature, args, lambda *_: cast(2), cast(3))

    return array.copy(layout="A")(array, start, count, step), codegen


# -- the kernels ---------------------------------------------------------------------------------


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
    contiguous spans are :func:`_tail`, kept apart so Numba types them as C arrays)."""
    return _every(xf, start, count, stride_w)


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
        xs, bs = _tail(xf, base + w * channels), _tail(best, lo * channels)
        for j in range((hi - lo) * channels):
            bs[j] = better(xs[j], bs[j])
    elif channels == 1:
        xs, bs = _strided(xf, base + w, hi - lo, stride_w), _tail(best, lo)
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
            xs = _tail(xf, base + (w + (ow - lo) * stride_w) * channels)
            bs = _tail(best, ow * channels)
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
        xs, count = _tail(xf, base + w * channels), (hi - lo) * channels
        _flag_span(
            xs, _tail(best, at), _tail(hits, shift + at), _tail(taken, at), count, first_only
        )
    elif channels == 1:
        xs = _strided(xf, base + w, hi - lo, stride_w)
        _flag_span(
            xs, _tail(best, lo), _tail(hits, shift + lo), _tail(taken, lo), hi - lo, first_only
        )
    elif channels <= _FEW_CHANNELS:
        for c in range(channels):
            at, count = lo * channels + c, hi - lo
            xs = _strided(xf, base + w * channels + c, count, stride_w * channels)
            bs, ts = _strided(best, at, count, channels), _strided(taken, at, count, channels)
            _flag_span(xs, bs, _strided(hits, shift + at, count, channels), ts, count, first_only)
    else:
        for ow in range(lo, hi):
            at = ow * channels
            xs = _tail(xf, base + (w + (ow - lo) * stride_w) * channels)
            _flag_span(
                xs, _tail(best, at), _tail(hits, shift + at), _tail(taken, at), channels, first_only
            )


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
    xf, af = _borrow(X.reshape(X.size)), _borrow(A.reshape(A.size))
    winners, reach = _borrow(winners), _borrow(reach)
    length = out_w * channels
    row_size = size_w * channels
    rows = _rows(X.shape, geometry)
    best_owner = np.empty(length, dtype=X.dtype)
    taken_owner = np.zeros(length, dtype=np.bool_)
    words_owner = np.zeros((length >> 3) + 2, dtype=np.uint64)
    best, taken, hit_words = _borrow(best_owner), _borrow(taken_owner), _borrow(words_owner)
    hits = hit_words.view(np.bool_)
    # Channels and a stride along w: the window's rows are first pooled column by column (one
    # long loop per row), then along w (one span of c per output and offset): a third of the
    # short spans for a 3x3 window.
    separable = channels > 1 and stride_w > 1 and pool_t * pool_h > 1
    columns_owner = np.empty(row_size if separable else 0, dtype=X.dtype)
    columns = _borrow(columns_owner)
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
                            xs = _tail(xf, base)
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
    _keep(best_owner)
    _keep(taken_owner)
    _keep(words_owner)
    _keep(columns_owner)


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
    words = _tail(mask_words, first)
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
    gf, df = _borrow(G.reshape(G.size)), _borrow(dX.reshape(dX.size))
    winners, reach = _borrow(winners), _borrow(reach)
    length = out_w * channels
    rows = _rows(dX.shape, geometry)
    words_owner = np.zeros((length >> 3) + 3, dtype=np.uint64)
    mask_words = _borrow(words_owner)
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
                            gs, ms = _tail(gf, start + at), _tail(masks, shift + at)
                            if stride_w == 1:
                                _select(
                                    gs, ms, _tail(df, base + w * channels), (hi - lo) * channels
                                )
                                continue
                            if channels == 1:
                                _select(gs, ms, _strided(df, base + w, hi - lo, stride_w), hi - lo)
                                continue
                            for ow in range(lo, hi):
                                at = ow * channels
                                ds = _tail(df, base + (w + (ow - lo) * stride_w) * channels)
                                _select(
                                    _tail(gf, start + at), _tail(masks, shift + at), ds, channels
                                )
                row += 1
    _keep(words_owner)


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
    gf, df = _borrow(G.reshape(G.size)), _borrow(dX.reshape(dX.size))
    winners, reach, firsts = _borrow(winners), _borrow(reach), _borrow(firsts)
    length = out_w * channels
    row_size = size_w * channels
    words_owner = np.zeros((length >> 3) + 3, dtype=np.uint64)
    mask_words = _borrow(words_owner)
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
                            gs, ms = _tail(gf, start + at), _tail(masks, shift + at)
                            if stride_w == 1:
                                ds = _tail(df, base + w * channels)
                                _gather(gs, ms, ds, (hi - lo) * channels, assign, zero)
                                continue
                            if channels == 1:
                                ds = _strided(df, base + w, hi - lo, stride_w)
                                _gather(gs, ms, ds, hi - lo, assign, zero)
                                continue
                            for ow in range(lo, hi):
                                at = ow * channels
                                ds = _tail(df, base + (w + (ow - lo) * stride_w) * channels)
                                gs, ms = _tail(gf, start + at), _tail(masks, shift + at)
                                _gather(gs, ms, ds, channels, assign, zero)
                base += row_size
    _keep(words_owner)


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
    xf, af = _borrow(X.reshape(X.size)), _borrow(A.reshape(A.size))
    gf, df = _borrow(G.reshape(G.size)), _borrow(dX.reshape(dX.size))
    winners = _borrow(winners)
    # Per output, each pass visits the window offsets in row-major order (offsets outermost):
    # forward folds them in :func:`_forward`'s order, which decides the NaN and the zero kept
    # among equals; with channels and a stride along w that is each column over (kt, kh)
    # first, then the columns along w.
    separable = channels > 1 and stride_w > 1 and pool_t * pool_h > 1
    af[:] = identity
    columns_owner = np.empty(A.size if separable else 0, dtype=A.dtype)
    taken_owner = np.zeros(A.size if first_only else 0, dtype=np.bool_)
    columns, taken = _borrow(columns_owner), _borrow(taken_owner)
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
    _keep(columns_owner)
    _keep(taken_owner)


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
