"""poolgrad in five minutes: a session's forward and backward, then the stateless route.

Start a server in one terminal (``make serve`` installs the project into ``.venv`` and serves),
then in another, with the Python of that virtualenv (or any with ``pip install poolgrad``)::

    .venv/bin/python examples/quickstart.py         # http://127.0.0.1:8000
    POOLGRAD_BASE_URL=http://host:8000 POOLGRAD_API_KEY=... .venv/bin/python examples/quickstart.py

Each result is checked against what 2x2 max pooling must give, computed here with NumPy.
"""

from __future__ import annotations

import sys

try:
    import numpy as np

    import poolgrad
except ModuleNotFoundError as missing:
    sys.exit(
        f"{missing.name} is not installed for {sys.executable}: run `make serve` (or "
        f"`pip install poolgrad`), then `.venv/bin/python {sys.argv[0]}`"
    )


def expected_max_pool(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 max pooling of (m, h, w, d) with even h, w, and its gradient for dA = 1."""
    m, h, w, d = X.shape
    windows = X.reshape(m, h // 2, 2, w // 2, 2, d)
    A = windows.max(axis=(2, 4))
    winners = windows == A[:, :, None, :, None, :]  # every tied maximum gets the gradient
    return A, winners.reshape(X.shape).astype(X.dtype)


def main() -> int:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)  # (batch, height, width, channels)
    A_expected, dX_expected = expected_max_pool(X)

    try:
        with poolgrad.Client() as client:
            print(f"server: {client.base_url}  health: {client.health()}")

            with client.session(mode="max", pool_size=(2, 2)) as session:
                A = session.forward(X)  # the server caches what backward needs
                dX = session.backward(np.ones_like(A))
                print(f"session {session.id} at step {session.step}")
                print(f"forward:  X {X.shape} {X.dtype} -> A {A.shape} {A.dtype}")
                print(f"backward: dA {A.shape} -> dX {dX.shape} {dX.dtype}")
            # Leaving the block deleted the session on the server.

            A2, dX2 = client.gradient(X, np.ones_like(A), mode="max", pool_size=2)
            print(f"stateless gradient: A {A2.shape}, dX {dX2.shape}")
    except poolgrad.APIConnectionError as exc:
        print(f"cannot reach the server: {exc}", file=sys.stderr)
        return 2
    except poolgrad.APIError as exc:
        print(f"the server refused: {exc}", file=sys.stderr)
        return 2

    checks = {
        "session forward": np.array_equal(A, A_expected),
        "session backward": np.array_equal(dX, dX_expected),
        "stateless forward": np.array_equal(A2, A_expected),
        "stateless backward": np.array_equal(dX2, dX_expected),
    }
    for name, ok in checks.items():
        print(f"{name:>18}: {'ok' if ok else 'MISMATCH'}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
