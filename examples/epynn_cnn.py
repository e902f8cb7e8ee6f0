"""Train a small EpyNN CNN whose pooling layer runs on a poolgrad server.

EpyNN's own trainer drives the network; only the pooling layer is swapped for
``poolgrad.epynn.RemotePooling``, which sends each forward and backward to the server. The data
is made here: 8x8 one-channel images with a bright 3x3 blob in the top half (class 0) or the
bottom half (class 1).

With a server running (``make serve``), from the repository::

    .venv/bin/python examples/epynn_cnn.py                 # http://127.0.0.1:8000, 10 epochs
    .venv/bin/python examples/epynn_cnn.py --epochs 3 --base-url http://host:8000

EpyNN (GPL-3.0) is not a dependency of poolgrad: ``make serve`` or ``make test`` installs it into
``.venv`` (``pip install --no-deps epynn==1.2.13`` plus matplotlib, tabulate, termcolor,
texttable and pygments elsewhere). Importing ``poolgrad.epynn`` lets EpyNN 1.2.13 train under
NumPy 2 (it restores ``np.VisibleDeprecationWarning``, which EpyNN's trainer reads).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # EpyNN imports pyplot: never open a window
try:
    import numpy as np
    from epynn.commons.maths import relu, softmax
    from epynn.convolution.models import Convolution
    from epynn.dense.models import Dense
    from epynn.embedding.models import Embedding
    from epynn.flatten.models import Flatten
    from epynn.network.models import EpyNN
    from epynn.settings import se_hPars

    import poolgrad
    from poolgrad.epynn import RemotePooling  # also lets EpyNN train under NumPy 2
except ModuleNotFoundError as missing:
    sys.exit(
        f"{missing.name} is not installed for {sys.executable}: run `make test` once, then "
        f"`.venv/bin/python {sys.argv[0]}` (see the module docstring)"
    )

SEED = 3
IMAGES = 96


def blob_images(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``IMAGES`` noisy 8x8x1 images and their labels: 0 = blob in the top half, 1 = bottom."""
    labels = rng.integers(0, 2, IMAGES)
    images = rng.uniform(0.0, 0.2, (IMAGES, 8, 8, 1))
    for image, label in zip(images, labels, strict=True):
        top = rng.integers(0, 2) + 4 * label  # rows 0-1 (+ 4 for the bottom half)
        left = rng.integers(0, 6)
        image[top : top + 3, left : left + 3, 0] += 1.0
    return images, labels


def train(client: poolgrad.Client, epochs: int) -> dict[str, list[float]]:
    """Train the CNN for ``epochs``; the training set's accuracy and MSE after each epoch."""
    np.random.seed(SEED)  # EpyNN's Embedding splits the data with NumPy's global generator
    X, y = blob_images(np.random.default_rng(SEED))
    with RemotePooling(pool_size=(2, 2), pool=np.max, client=client) as pooling:
        model = EpyNN(
            layers=[
                Embedding(X_data=X, Y_data=y, Y_encode=True, batch_size=16),
                Convolution(unit_filters=4, filter_size=(3, 3), activate=relu),
                pooling,
                Flatten(),
                Dense(2, softmax),
            ],
            name="poolgrad-example",
        )
        # EpyNN writes into its hyperparameters: give it a copy.
        hyper = dict(se_hPars, learning_rate=0.1)
        model.initialize(loss="MSE", seed=SEED, metrics=["accuracy"], se_hPars=hyper, end="\r")
        model.train(epochs=epochs, init_logs=False)
    # EpyNN keeps one list per data set (train, validation) for each metric.
    return {name: [float(value) for value in per_set[0]] for name, per_set in model.metrics.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument(
        "--base-url", default=None, help="the server (default: POOLGRAD_BASE_URL or the SDK's)"
    )
    args = parser.parse_args()
    try:
        with poolgrad.Client(args.base_url) as client:
            history = train(client, args.epochs)
    except poolgrad.APIConnectionError as exc:
        print(f"cannot reach the server: {exc}", file=sys.stderr)
        return 2
    accuracy, mse = history["accuracy"], history["MSE"]
    print(
        f"\ntrained {len(mse)} epochs through RemotePooling: training accuracy "
        f"{accuracy[0]:.3f} -> {accuracy[-1]:.3f}, MSE {mse[0]:.4f} -> {mse[-1]:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
