"""Container smoke check (not a pytest module): the SDK against a running image.

    BASE_URL=http://127.0.0.1:8000 python tests/container_smoke.py

Creates a session, runs forward and backward, checks them and the stateless route against
the engine in-process, deletes the session, and exits non-zero with a message on any mismatch.
``POOLGRAD_API_KEY`` is used if the server needs a key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from engine import PoolSpec, backward, forward
from poolgrad import Client, PoolgradError, SessionNotFoundError


def fail(message: str) -> int:
    print(f"container smoke: FAIL: {message}", file=sys.stderr)
    return 1


def main() -> int:
    base_url = os.environ.get("BASE_URL")
    if not base_url:
        return fail("set BASE_URL to the server under test, e.g. http://127.0.0.1:8000")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2, 6, 6, 3))
    dA = rng.standard_normal((2, 3, 3, 3))
    spec = {"mode": "max", "pool_size": [2, 2]}
    A_ref, state = forward(X, PoolSpec(mode="max", pool_size=(2, 2)))
    dX_ref = backward(state, dA)
    try:
        with Client(base_url, max_retries=5) as client:
            client.health()
            with client.session(mode="max", pool_size=(2, 2)) as session:
                A = session.forward(X)
                dX = session.backward(dA)
                step = session.step
            try:
                client.get_session(session.id)
                return fail(f"session {session.id} still exists after the with block")
            except SessionNotFoundError:
                pass
            A2, dX2 = client.gradient(X, dA, mode="max", pool_size=2)
    except PoolgradError as exc:
        return fail(f"{type(exc).__name__}: {exc}")
    for name, got, want in [("A", A, A_ref), ("dX", dX, dX_ref),
                            ("stateless A", A2, A_ref), ("stateless dX", dX2, dX_ref)]:  # fmt: skip
        if got.shape != want.shape or got.dtype != want.dtype:
            return fail(f"{name}: {got.shape} {got.dtype} != engine {want.shape} {want.dtype}")
        if not np.array_equal(got, want):
            worst = float(np.nanmax(np.abs(got - want)))
            return fail(f"{name} differs from the engine (max abs diff {worst:g})")
    if step != 1:
        return fail(f"the first forward answered step {step}, expected 1")
    print(f"container smoke: ok ({base_url}, spec {spec}, A {A.shape}, dX {dX.shape})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
