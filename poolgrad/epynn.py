"""A drop-in for EpyNN's ``Pooling`` layer whose forward and backward run on the service.

>>> from poolgrad.epynn import RemotePooling               # doctest: +SKIP
>>> layers = [embedding, Convolution(8, 2), RemotePooling(pool_size=(2, 2)), Flatten(), Dense(2)]

:class:`RemotePooling` takes ``epynn.pooling.models.Pooling``'s constructor arguments and has the
attributes and methods EpyNN's network uses (``d``, ``fs``, ``fc``, ``bs``, ``bc``, ``p``, ``g``,
``o``, ``activation``, ``se_hPars``, ``trainable``, ``compute_shapes``, ``initialize_parameters``,
``forward``, ``backward``, ``compute_gradients``, ``update_parameters``, ``update_shapes``), so a
network cannot tell them apart. It is duck-typed: this module never imports EpyNN, and poolgrad
does not depend on it.

Semantics are EpyNN's: channels_last ``(m, h, w, d)``, valid padding, max or min pooling, every
tied maximum gets the full gradient (``ties="all"``), NaN propagates. As in EpyNN, ``strides``
other than a tuple is ignored (the window's size is used); a warning says so.

Each layer owns one server session, created on its first forward and deleted by :meth:`close`
(or ``with layer:``), or, since EpyNN's training never calls ``close``, when the layer is
garbage-collected (best effort: one short attempt, errors ignored). A session lost on the server
(expired, store restarted) is recreated transparently: forward simply runs again, backward
replays the cached input first.

NumPy 2: importing this module restores ``np.VisibleDeprecationWarning`` (NumPy 2 moved it to
``np.exceptions``) when it is missing, because EpyNN 1.2.13, its latest release, still reads it
in its trainer (``epynn.embedding.dataset.mini_batches``) and would stop with an
``AttributeError`` on the first epoch. The alias is the very class NumPy 2 raises, so nothing
else changes; import ``poolgrad.epynn`` before training and EpyNN runs under NumPy 1 and 2 alike.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from poolgrad._client import Client, Session
from poolgrad._exceptions import SessionNotFoundError

__all__ = ["RemotePooling"]

if not hasattr(np, "VisibleDeprecationWarning"):  # NumPy 2: see the module docstring
    setattr(np, "VisibleDeprecationWarning", np.exceptions.VisibleDeprecationWarning)  # noqa: B010

_MODES: dict[Callable[..., Any], str] = {
    np.max: "max",
    np.amax: "max",
    np.min: "min",
    np.amin: "min",
}


def _release(session: Session | None, client: Client | None, owns_client: bool) -> None:
    """Free what a layer holds: its session (one short attempt, errors ignored: this runs from
    ``close`` or from the garbage collector, where nobody could handle them), then its client
    if the layer made it. Takes no reference to the layer, so the layer can be collected."""
    try:
        if session is not None:
            with contextlib.suppress(Exception):
                session._delete(cleanup=True)
    finally:
        if owns_client and client is not None:
            client.close()


def _pool_mode(pool: Callable[..., Any]) -> str:
    mode = _MODES.get(pool)
    if mode is None:
        name = getattr(pool, "__name__", repr(pool))
        raise ValueError(f"pool must be np.max or np.min (as in EpyNN's Pooling), got {name}")
    return mode


class RemotePooling:
    """EpyNN ``Pooling(pool_size, strides, pool)`` computed by a poolgrad service.

    Parameters
    ----------
    pool_size : int or tuple of 2 ints
        Window height and width; an int means a square window.
    strides : tuple of 2 ints, optional
        Window step; ``None`` (or, as in EpyNN, an int) means ``pool_size``.
    pool : ``np.max`` or ``np.min``
        The pooling operation.
    client : poolgrad.Client, optional
        The client to use (yours to close). By default the layer makes one on first use from
        ``POOLGRAD_BASE_URL`` and ``POOLGRAD_API_KEY`` and closes it in :meth:`close`.
    """

    def __init__(
        self,
        pool_size: int | tuple[int, int] = (2, 2),
        strides: int | tuple[int, int] | None = None,
        pool: Callable[..., Any] = np.max,
        client: Client | None = None,
    ) -> None:
        self.mode = _pool_mode(pool)
        window = pool_size if isinstance(pool_size, tuple) else (pool_size, pool_size)
        if strides is not None and not isinstance(strides, tuple):
            warnings.warn(
                f"strides={strides!r} is not a tuple: ignored as EpyNN's Pooling ignores it, "
                f"the window {window} is used; pass strides=({strides}, {strides}) to honour it",
                UserWarning,
                stacklevel=2,
            )
        step = strides if isinstance(strides, tuple) else window
        # EpyNN's layer state, read by its network, reports and logs.
        self.d: dict[str, Any] = {}
        self.fs: dict[str, tuple[int, ...]] = {}
        self.p: dict[str, np.ndarray] = {}
        self.fc: dict[str, np.ndarray] = {}
        self.bs: dict[str, tuple[int, ...]] = {}
        self.g: dict[str, np.ndarray] = {}
        self.bc: dict[str, np.ndarray] = {}
        self.o: dict[str, Any] = {}
        self.se_hPars: dict[str, Any] | None = None
        self.d["ph"], self.d["pw"] = window
        self.d["sh"], self.d["sw"] = step
        self.pool = pool
        self.activation = {"pool": pool.__name__}
        self.trainable = False
        self._client = client
        self._owns_client = client is None
        self._session: Session | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def spec(self) -> dict[str, Any]:
        """The poolgrad layer spec equal to this EpyNN layer."""
        return {
            "mode": self.mode,
            "pool_size": [self.d["ph"], self.d["pw"]],
            "strides": [self.d["sh"], self.d["sw"]],
            "padding": "valid",
            "layout": "channels_last",
            "ties": "all",
            "nan": "propagate",
        }

    # ------------------------------------------------------------ EpyNN's layer API

    def update_shapes(self, cache: dict[str, np.ndarray], shapes: dict[str, Any]) -> None:
        """Record the shape of every array in ``cache`` into ``shapes``."""
        shapes.update({name: array.shape for name, array in cache.items()})

    def compute_shapes(self, A: np.ndarray) -> None:
        """Input dims ``m, h, w, d`` and output dims ``oh, ow`` (valid padding), locally."""
        self.fs["X"] = A.shape
        self.d["m"], self.d["h"], self.d["w"], self.d["d"] = A.shape
        self.d["oh"] = (self.d["h"] - self.d["ph"]) // self.d["sh"] + 1
        self.d["ow"] = (self.d["w"] - self.d["pw"]) // self.d["sw"] + 1

    def initialize_parameters(self) -> None:
        """Nothing to initialize: pooling has no parameters."""

    def forward(self, A: npt.ArrayLike) -> np.ndarray:
        """Pool ``A`` (m, h, w, d) on the service; returns (m, oh, ow, d) of A's dtype.

        Costs one request and one copy of the output (to EpyNN's memory layout).
        """
        X = np.asarray(A)
        self.compute_shapes(X)
        session = self._open_session()
        try:
            out = session.forward(X)
        except SessionNotFoundError:
            out = self._reopen_session().forward(X)
        # Laid out in memory as EpyNN's Pooling lays out its output (windows outermost):
        # the next layers reduce in memory order, so the same values in another layout
        # would round differently and a training run would drift in the last bits.
        A_out = np.moveaxis(np.empty_like(out, shape=np.moveaxis(out, 0, 2).shape), 2, 0)
        A_out[...] = out
        self.fc["X"] = X
        self.fc["A"] = self.fc["Z"] = A_out
        self.update_shapes(self.fc, self.fs)
        return A_out

    def backward(self, dX: npt.ArrayLike) -> np.ndarray:
        """Gradient for the input of the last forward, from the next layer's ``dX``.

        Costs one request (two if the session was lost) and one copy, into the memory
        layout of the forward's input as EpyNN's ``np.zeros_like(X)`` gives.
        """
        dA = np.asarray(dX)
        self.bc["dA"] = dA
        session = self._open_session()
        try:
            grad = session.backward(dA)
        except SessionNotFoundError:
            session = self._reopen_session()
            session.forward(self.fc["X"])
            grad = session.backward(dA)
        # Laid out like the input, as EpyNN's own gradient is (see forward for why).
        dX_out = np.empty_like(self.fc["X"], dtype=grad.dtype)
        dX_out[...] = grad
        self.bc["dX"] = dX_out
        self.update_shapes(self.bc, self.bs)
        return dX_out

    def compute_gradients(self) -> None:
        """Nothing to compute: pooling has no parameters."""

    def update_parameters(self) -> None:
        """Nothing to update: pooling has no parameters."""

    # -------------------------------------------------------------------- session

    def _open_session(self) -> Session:
        if self._session is None:
            if self._client is None:
                self._client = Client()
                self._track()
            self._session = self._client.create_session(**self.spec)
            self._track()
        return self._session

    def _reopen_session(self) -> Session:
        self._session = None  # lost on the server: nothing to delete
        self._track()
        return self._open_session()

    def _track(self) -> None:
        """Release what the layer holds now when it is collected (or closed)."""
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, _release, self._session, self._client, self._owns_client
        )

    def close(self) -> None:
        """Delete the layer's session and close the client the layer made (if it made one).

        Best effort, like the garbage collector's cleanup: a session the server cannot delete
        now expires after its idle TTL.
        """
        finalizer, self._finalizer = self._finalizer, None
        self._session = None
        if self._owns_client:
            self._client = None
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> RemotePooling:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # EpyNN pickles whole networks (`model.write()`): keep the layer, not its connection.
        state = dict(self.__dict__)
        # An unpickled layer connects anew from the environment, with a client of its own.
        state.update(_session=None, _client=None, _owns_client=True, _finalizer=None)
        return state

    def __repr__(self) -> str:
        return (
            f"RemotePooling(pool_size=({self.d['ph']}, {self.d['pw']}), "
            f"strides=({self.d['sh']}, {self.d['sw']}), pool=np.{self.mode})"
        )
