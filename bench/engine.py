"""Benchmark: the engine's two kernel sets against PyTorch CPU autograd and a copy of X.

Run from the repository root::

    .venv/bin/python -m bench.engine              # full suite, float32 and float64
    .venv/bin/python -m bench.engine --quick      # float32 only, fewer rounds
    .venv/bin/python -m bench.engine --threads 1  # engine and torch on one thread
    .venv/bin/python -m bench.engine --tiny       # per-call cost on tiny inputs, one thread

For each case (channels_last input, max pooling, ties="all", random normal data) it prints the
median wall time of one forward+backward of

- ``numpy``: :func:`engine.forward` + :func:`engine.backward` with ``kernels="numpy"``;
- ``compiled``: the same with ``kernels="compiled"`` (Numba; skipped when it is not installed);
- ``auto``: the same with the default ``kernels="auto"``, which routes each call
  (:func:`engine.compiled.kernel_set`: NumPy for single-channel inputs of 1024 elements on);
- ``torch``: ``F.max_pool2d`` + ``autograd.grad`` on the same data, channels_last memory;
- ``copy``: ``X.copy()``, the memory-bandwidth floor (a forward+backward reads X and writes
  dX at least once);

engine and torch on the same number of threads (2 by default), then the ratios to torch and to
the copy, their geometric means over the suite and the worst shape. Contenders are timed in
alternating blocks of calls with a pause before each block: torch's OpenMP workers spin for a
while after each call and would steal a core from whatever runs next. Before timing, each case
checks that both kernel sets agree bit for bit and with torch (random normal data has no ties,
so ``ties="all"`` and torch's first-index rule coincide). The load average is printed before
and after: timings are only comparable as ratios within one run. Besides the medians, the
geometric means of the best blocks are printed: on a loaded machine the best block is the
steadier estimate of what a call costs (torch's two OpenMP threads lose most when a core is
taken away mid-call, at a barrier).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import timeit
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

import engine
from engine import compiled

SUITE: list[tuple[tuple[int, int, int, int], int, int]] = [
    # (X shape (m, h, w, d), pool size, stride)
    ((64, 32, 32, 32), 2, 2),
    ((64, 32, 32, 32), 3, 2),
    ((64, 32, 32, 32), 3, 1),
    ((8, 112, 112, 64), 2, 2),
    ((8, 56, 56, 64), 3, 2),
    ((1, 512, 512, 1), 2, 2),
    ((32, 28, 28, 1), 2, 2),
    ((16, 64, 64, 3), 2, 2),
]
GOALS = (
    "goals: engine (auto, compiled kernels) geometric mean <= 0.70 of torch, no shape above 1.30"
)

WARMUP_ROUNDS = 2
PAUSE_SECONDS = 0.02


def timings(
    runs: list[Callable[[], object]], rounds: int, block: int = 1
) -> list[tuple[float, float]]:
    """(median, best) seconds per call of each of ``runs``: ``rounds`` rounds, each timing a
    block of ``block`` calls of every contender in turn after a :data:`PAUSE_SECONDS` pause
    (load from other processes hits every contender alike; torch's spinning workers settle)."""
    for _ in range(WARMUP_ROUNDS):
        for run in runs:
            run()
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, times in zip(runs, samples, strict=True):
            time.sleep(PAUSE_SECONDS)
            start = time.perf_counter()
            for _ in range(block):
                run()
            times.append((time.perf_counter() - start) / block)
    return [(statistics.median(times), min(times)) for times in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="float32 only, fewer rounds")
    parser.add_argument("--threads", type=int, default=2, help="threads for engine and torch")
    parser.add_argument(
        "--tiny", action="store_true", help="per-call microseconds on tiny inputs, one thread"
    )
    args = parser.parse_args()
    if args.tiny:
        _tiny()
        return
    rounds, block = (7, 3) if args.quick else (11, 5)
    dtypes = (np.float32,) if args.quick else (np.float32, np.float64)
    has_compiled = compiled.available()
    torch.set_num_threads(args.threads)
    numpy_options = engine.EngineOptions(threads=args.threads, kernels="numpy")
    compiled_options = engine.EngineOptions(threads=args.threads, kernels="compiled")
    auto_options = engine.EngineOptions(threads=args.threads, kernels="auto")
    kernels_note = "compiled kernels absent"
    if has_compiled:
        started = time.perf_counter()
        compiled.warm_up()
        kernels_note = f"compiled kernels ready in {time.perf_counter() - started:.2f} s"
    print(
        f"engine threads {args.threads}, torch threads {torch.get_num_threads()}; "
        f"numpy {np.__version__}, torch {torch.__version__}, {kernels_note}; "
        f"{os.cpu_count()} cpus, load average {_load()}; median of {rounds} blocks of {block} "
        f"calls after {WARMUP_ROUNDS} warm-up rounds"
    )
    header = (
        f"{'X shape':>18} {'pool':>6} {'dtype':>7} {'copy ms':>8} {'numpy ms':>9} "
        f"{'compiled':>9} {'auto ms':>8} {'torch ms':>9} {'np/torch':>8} {'cc/torch':>8} "
        f"{'au/torch':>8} {'np/copy':>8} {'cc/copy':>8} {'au/copy':>8}"
    )
    print(header)
    print("-" * len(header))
    keys = ("np/torch", "cc/torch", "au/torch", "np/copy", "cc/copy", "au/copy")
    ratios: dict[str, list[float]] = {key: [] for key in keys}
    best_ratios: dict[str, list[float]] = {key: [] for key in keys}
    names = []
    rng = np.random.default_rng(0)
    for shape, pool, stride in SUITE:
        for dtype in dtypes:
            X = rng.standard_normal(shape).astype(dtype)
            spec = engine.PoolSpec(pool_size=pool, strides=stride)
            A, state = engine.forward(X, spec, options=numpy_options)
            dA = rng.standard_normal(A.shape).astype(dtype)
            dX = engine.backward(state, dA, options=numpy_options)
            x = torch.from_numpy(X).permute(0, 3, 1, 2).detach().requires_grad_(True)
            da = torch.from_numpy(dA).permute(0, 3, 1, 2)
            assert x.is_contiguous(memory_format=torch.channels_last)
            _check_agreement(X, A, dX, x, da, pool, stride)
            runs = [
                X.copy,
                _engine_run(X, dA, spec, numpy_options),
                _torch_run(x, da, pool, stride),
            ]
            if has_compiled:
                A_c, state_c = engine.forward(X, spec, options=compiled_options)
                dX_c = engine.backward(state_c, dA, options=compiled_options)
                if not (
                    A_c.tobytes() == A.tobytes()
                    and state_c.to_bytes() == state.to_bytes()
                    and dX_c.tobytes() == dX.tobytes()
                ):
                    raise SystemExit(f"numpy and compiled kernels disagree on {shape} {dtype}")
                runs.append(_engine_run(X, dA, spec, compiled_options))
                runs.append(_engine_run(X, dA, spec, auto_options))
            measured = timings(runs, rounds, block)
            medians = [median for median, _ in measured]
            case = _ratios(medians)
            for key, value in case.items():
                ratios[key].append(value)
            for key, value in _ratios([best for _, best in measured]).items():
                best_ratios[key].append(value)
            copy_s, numpy_s, torch_s, compiled_s, auto_s = _padded(medians)
            name = f"{shape!s} {pool}x{pool}/{stride} {np.dtype(dtype).name}"
            names.append(name)
            print(
                f"{shape!s:>18} {f'{pool}x{pool}/{stride}':>6} {np.dtype(dtype).name:>7} "
                f"{copy_s * 1e3:8.2f} {numpy_s * 1e3:9.2f} {compiled_s * 1e3:9.2f} "
                f"{auto_s * 1e3:8.2f} {torch_s * 1e3:9.2f} "
                + " ".join(f"{case[key]:8.2f}" for key in keys)
            )
    print("-" * len(header))
    for label, table in (("medians", ratios), ("best blocks", best_ratios)):
        means = {key: _geomean(values) for key, values in table.items()}
        print(
            f"geometric means ({label}): "
            + ", ".join(f"{key} {value:.3f}" for key, value in means.items())
        )
    for key in ("np/torch", "cc/torch", "au/torch"):
        worst = max(range(len(names)), key=ratios[key].__getitem__)
        print(f"worst {key}: {ratios[key][worst]:.2f} ({names[worst]})")
    print(f"{GOALS}; load average {_load()}")


def _padded(times: list[float]) -> list[float]:
    """copy, numpy, torch, compiled, auto: NaN for compiled and auto = numpy without Numba."""
    return times if len(times) == 5 else [*times, math.nan, times[1]]


def _ratios(times: list[float]) -> dict[str, float]:
    copy_s, numpy_s, torch_s, compiled_s, auto_s = _padded(times)
    return {
        "np/torch": numpy_s / torch_s,
        "cc/torch": compiled_s / torch_s,
        "au/torch": auto_s / torch_s,
        "np/copy": numpy_s / copy_s,
        "cc/copy": compiled_s / copy_s,
        "au/copy": auto_s / copy_s,
    }


TINY_SUITE: list[tuple[tuple[int, int, int, int], int, int]] = [
    ((1, 8, 8, 1), 2, 2),
    ((1, 8, 8, 1), 3, 2),
    ((2, 4, 4, 3), 2, 2),
    ((2, 4, 4, 3), 3, 2),
]


def _tiny() -> None:
    """Best-of-7 microseconds per float32 max forward+backward on tiny inputs with
    ``threads=1``, as the service's inline path runs them: what a call costs beyond its math.
    Each kernel set twice: :func:`engine.forward` then :func:`engine.backward`, and
    :func:`engine.gradient` (both in one call, as the stateless route runs them)."""
    print(
        f"load {_load()}; microseconds per forward+backward (fwd+bwd) and per gradient "
        "(fused), threads=1, best of 7 x 2000"
    )
    rng = np.random.default_rng(0)
    for shape, pool, stride in TINY_SUITE:
        X = rng.standard_normal(shape).astype(np.float32)
        spec = engine.PoolSpec(pool_size=pool, strides=stride)
        dA = np.ones(engine.forward(X, spec)[0].shape, np.float32)
        cells = []
        for kernels in ("numpy", "auto") if compiled.available() else ("numpy",):
            options = engine.EngineOptions(threads=1, kernels=kernels)
            for name, run in (
                ("fwd+bwd", _engine_run(X, dA, spec, options)),
                ("fused", partial(engine.gradient, X, dA, spec, options=options)),
            ):
                best = min(timeit.repeat(run, number=2000, repeat=7)) / 2000
                cells.append(f"{kernels} {name} {best * 1e6:6.1f}")
        print(f"{shape!s:15} {pool}x{pool}/{stride}  " + "  ".join(cells))


def _engine_run(
    X: np.ndarray, dA: np.ndarray, spec: engine.PoolSpec, options: engine.EngineOptions
) -> Callable[[], object]:
    def run() -> object:
        return engine.backward(engine.forward(X, spec, options=options)[1], dA, options=options)

    return run


def _torch_run(x: torch.Tensor, da: torch.Tensor, pool: int, stride: int) -> Callable[[], object]:
    def run() -> object:
        return torch.autograd.grad(F.max_pool2d(x, pool, stride), x, da)

    return run


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
