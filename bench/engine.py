"""Benchmark: engine forward+backward against PyTorch CPU autograd and the seed's algorithm.

Run from the repository root::

    .venv/bin/python -m bench.engine            # full suite
    .venv/bin/python -m bench.engine --quick    # fewer repeats, seed timed once

For each case (channels_last input, max pooling, ties="all", random normal data) it prints the
median wall time of one forward+backward of

- ``engine``: :func:`engine.forward` + :func:`engine.backward`;
- ``torch``: ``F.max_pool2d`` + ``autograd.grad`` on the same data, channels_last memory,
  ``torch.set_num_threads`` equal to the engine's thread count;
- ``seed``: the seed's algorithm re-implemented here: a Python loop over output positions,
  vectorized over batch and channels, keeping the windows for backward (as EpyNN does);

then the ratios engine/torch and seed/engine, their geometric means, and the state size as a
fraction of X. Timings are only comparable as ratios within one run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import engine
from engine.parallel import thread_count

SUITE: list[tuple[tuple[int, int, int, int], int, int]] = [
    # (X shape (m, h, w, d), pool size, stride)
    ((64, 32, 32, 32), 2, 2),
    ((64, 32, 32, 32), 3, 2),
    ((8, 112, 112, 64), 2, 2),
    ((1, 512, 512, 1), 2, 2),
    ((32, 28, 28, 1), 2, 2),
]
DTYPES = (np.float32, np.float64)


def median_seconds(runs: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time of each of ``runs`` over ``repeats`` rounds, after one warm-up call.

    The runs are interleaved round by round so that load from other processes on a shared
    machine hits every contender alike.
    """
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, samples in zip(runs, times, strict=True):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def seed_forward_backward(X: np.ndarray, dA: np.ndarray, pool: int, stride: int) -> np.ndarray:
    """The seed's max pooling: one Python iteration per output position (h, w)."""
    m, h, w, d = X.shape
    out_h, out_w = (h - pool) // stride + 1, (w - pool) // stride + 1
    windows = np.empty((m, out_h, out_w, pool, pool, d), dtype=X.dtype)
    A = np.empty((m, out_h, out_w, d), dtype=X.dtype)
    for i in range(out_h):
        for j in range(out_w):
            window = X[:, i * stride : i * stride + pool, j * stride : j * stride + pool, :]
            windows[:, i, j] = window
            A[:, i, j] = window.max(axis=(1, 2))
    dX = np.zeros_like(X)
    for i in range(out_h):
        for j in range(out_w):
            mask = windows[:, i, j] == A[:, i, j, None, None, :]
            dX[:, i * stride : i * stride + pool, j * stride : j * stride + pool, :] += (
                mask * dA[:, i, j, None, None, :]
            )
    return dX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; seed timed once")
    args = parser.parse_args()
    repeats, seed_repeats = (5, 1) if args.quick else (21, 3)
    threads = thread_count()
    torch.set_num_threads(threads)
    print(
        f"engine threads = torch threads = {threads}; numpy {np.__version__}, "
        f"torch {torch.__version__}; median of {repeats} (seed: {seed_repeats})"
    )
    header = (
        f"{'X shape':>18} {'pool':>6} {'dtype':>7} {'engine ms':>10} {'torch ms':>9} "
        f"{'seed ms':>9} {'eng/torch':>9} {'seed/eng':>9} {'state/X':>8}"
    )
    print(header)
    print("-" * len(header))
    engine_vs_torch, seed_vs_engine = [], []
    rng = np.random.default_rng(0)
    for shape, pool, stride in SUITE:
        for dtype in DTYPES:
            X = rng.standard_normal(shape).astype(dtype)
            spec = engine.PoolSpec(pool_size=pool, strides=stride)
            A, state = engine.forward(X, spec)
            dA = rng.standard_normal(A.shape).astype(dtype)

            def run_engine(
                X: np.ndarray = X, dA: np.ndarray = dA, spec: engine.PoolSpec = spec
            ) -> None:
                engine.backward(engine.forward(X, spec)[1], dA)

            x = torch.from_numpy(X).permute(0, 3, 1, 2).detach().requires_grad_(True)
            da = torch.from_numpy(dA).permute(0, 3, 1, 2)

            def run_torch(
                x: torch.Tensor = x, da: torch.Tensor = da, pool: int = pool, stride: int = stride
            ) -> None:
                torch.autograd.grad(F.max_pool2d(x, pool, stride), x, da)

            engine_s, torch_s = median_seconds([run_engine, run_torch], repeats)

            def run_seed(
                X: np.ndarray = X, dA: np.ndarray = dA, pool: int = pool, stride: int = stride
            ) -> None:
                seed_forward_backward(X, dA, pool, stride)

            (seed_s,) = median_seconds([run_seed], seed_repeats)
            engine_vs_torch.append(engine_s / torch_s)
            seed_vs_engine.append(seed_s / engine_s)
            print(
                f"{shape!s:>18} {f'{pool}x{pool}/{stride}':>6} {np.dtype(dtype).name:>7} "
                f"{engine_s * 1e3:10.2f} {torch_s * 1e3:9.2f} {seed_s * 1e3:9.1f} "
                f"{engine_s / torch_s:9.2f} {seed_s / engine_s:9.1f} "
                f"{state.nbytes / X.nbytes:8.4f}"
            )
    print("-" * len(header))
    print(
        f"geometric mean engine/torch = {_geomean(engine_vs_torch):.3f} "
        f"(max {max(engine_vs_torch):.2f}); seed/engine = {_geomean(seed_vs_engine):.1f}"
    )


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


if __name__ == "__main__":
    main()
