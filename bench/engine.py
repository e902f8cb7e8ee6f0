"""Benchmark: engine forward+backward against PyTorch CPU autograd and the seed's algorithm.

Run from the repository root::

    .venv/bin/python -m bench.engine              # full suite
    .venv/bin/python -m bench.engine --quick      # fewer repeats, seed timed once
    .venv/bin/python -m bench.engine --threads 1  # engine and torch on one thread

For each case (channels_last input, max pooling, ties="all", random normal data) it prints the
median wall time of one forward+backward of

- ``engine``: :func:`engine.forward` + :func:`engine.backward`;
- ``torch``: ``F.max_pool2d`` + ``autograd.grad`` on the same data, channels_last memory,
  ``torch.set_num_threads`` equal to the engine's thread count;
- ``seed``: the seed's algorithm re-implemented here: a Python loop over output positions,
  vectorized over batch and channels, keeping the windows for backward (as EpyNN does);

then the ratios engine/torch (of medians, and of best times, which shared-machine load
disturbs less) and seed/engine, their geometric means and the worst shape, and the state size
as a fraction of X. Before timing, each case checks that engine and torch agree on A and dX
(random normal data has no ties, so ``ties="all"`` and torch's first-index rule coincide).
The load average is printed before and after: timings are only comparable as ratios within
one run, and a loaded machine hurts torch's OpenMP threads more than the engine.
"""

from __future__ import annotations

import argparse
import math
import os
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


WARMUP_ROUNDS = 2
SETTLE_SECONDS = 0.005


def timings(runs: list[Callable[[], object]], repeats: int) -> list[tuple[float, float]]:
    """(median, best) wall time of each of ``runs`` over ``repeats`` rounds, after
    :data:`WARMUP_ROUNDS` untimed rounds.

    The runs are interleaved round by round so that load from other processes on a shared
    machine hits every contender alike, each after a :data:`SETTLE_SECONDS` pause.
    """
    for _ in range(WARMUP_ROUNDS):
        for run in runs:
            run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, samples in zip(runs, times, strict=True):
            # Let the previous contender's threads go idle first: torch's OpenMP workers spin
            # for a while after each parallel region and would steal a core from the next run.
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
    return [(statistics.median(samples), min(samples)) for samples in times]


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
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for engine and torch (default: engine's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        # Read by the engine once, at its first call: set before any.
        os.environ["POOLGRAD_ENGINE_THREADS"] = str(args.threads)
    repeats, seed_repeats = (7, 1) if args.quick else (21, 3)
    threads = thread_count()
    torch.set_num_threads(threads)
    print(
        f"engine threads {thread_count()}, torch threads {torch.get_num_threads()}; "
        f"numpy {np.__version__}, torch {torch.__version__}; {os.cpu_count()} cpus, "
        f"load average {_load()}; median and best of {repeats} after {WARMUP_ROUNDS} warm-up "
        f"rounds (seed: {seed_repeats})"
    )
    header = (
        f"{'X shape':>18} {'pool':>6} {'dtype':>7} {'engine ms':>10} {'torch ms':>9} "
        f"{'seed ms':>9} {'eng/torch':>9} {'best e/t':>9} {'seed/eng':>9} {'state/X':>8}"
    )
    print(header)
    print("-" * len(header))
    engine_vs_torch, best_vs_torch, seed_vs_engine, names = [], [], [], []
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
            assert x.is_contiguous(memory_format=torch.channels_last)
            _check_agreement(X, A, engine.backward(state, dA), x, da, pool, stride)

            def run_torch(
                x: torch.Tensor = x, da: torch.Tensor = da, pool: int = pool, stride: int = stride
            ) -> None:
                torch.autograd.grad(F.max_pool2d(x, pool, stride), x, da)

            (engine_s, engine_best), (torch_s, torch_best) = timings(
                [run_engine, run_torch], repeats
            )

            def run_seed(
                X: np.ndarray = X, dA: np.ndarray = dA, pool: int = pool, stride: int = stride
            ) -> None:
                seed_forward_backward(X, dA, pool, stride)

            ((seed_s, _),) = timings([run_seed], seed_repeats)
            engine_vs_torch.append(engine_s / torch_s)
            best_vs_torch.append(engine_best / torch_best)
            seed_vs_engine.append(seed_s / engine_s)
            name = f"{shape!s} {pool}x{pool}/{stride} {np.dtype(dtype).name}"
            names.append(name)
            print(
                f"{shape!s:>18} {f'{pool}x{pool}/{stride}':>6} {np.dtype(dtype).name:>7} "
                f"{engine_s * 1e3:10.2f} {torch_s * 1e3:9.2f} {seed_s * 1e3:9.1f} "
                f"{engine_s / torch_s:9.2f} {engine_best / torch_best:9.2f} "
                f"{seed_s / engine_s:9.1f} {state.nbytes / X.nbytes:8.4f}"
            )
    print("-" * len(header))
    worst = max(range(len(names)), key=engine_vs_torch.__getitem__)
    print(
        f"geometric mean engine/torch = {_geomean(engine_vs_torch):.3f} of medians, "
        f"{_geomean(best_vs_torch):.3f} of best times; worst {engine_vs_torch[worst]:.2f} "
        f"({names[worst]}); seed/engine = {_geomean(seed_vs_engine):.1f}; "
        f"load average {_load()}"
    )


def _check_agreement(
    X: np.ndarray,
    A: np.ndarray,
    dX: np.ndarray,
    x: torch.Tensor,
    da: torch.Tensor,
    pool: int,
    stride: int,
) -> None:
    a = F.max_pool2d(x, pool, stride)
    (dx,) = torch.autograd.grad(a, x, da)
    torch_A = a.detach().permute(0, 2, 3, 1).numpy()
    torch_dX = dx.permute(0, 2, 3, 1).numpy()
    if not (np.array_equal(A, torch_A) and np.allclose(dX, torch_dX, rtol=1e-5, atol=1e-5)):
        raise SystemExit(f"engine and torch disagree on X {X.shape} {X.dtype} {pool}/{stride}")


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


if __name__ == "__main__":
    main()
