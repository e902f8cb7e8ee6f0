"""Prometheus metrics, one registry per app so several apps can live in one process (tests).

Request counts and latency are recorded by the request middleware, engine seconds by
:mod:`service.compute`; session gauges are read from the store at scrape time (so they are
right for a shared store too), and the expired/refused counters are what this process's store
reclaimed and refused.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from service.errors import StoreUnavailable
from service.httpio import BodyBudget
from service.stores import SessionStore

__all__ = ["CONTENT_TYPE", "LeanCounter", "LeanHistogram", "Metrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _StoreCounters(Collector):
    """Counters kept by the store instance itself (it reclaims and refuses on its own)."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "poolgrad_sessions_expired",
            "Sessions reclaimed after their idle TTL ran out.",
            value=self._store.expired_total,
        )
        yield CounterMetricFamily(
            "poolgrad_sessions_refused",
            "Session writes refused because the session count or state-byte budget was full.",
            value=self._store.refused_total,
        )


class _BodyBudgetGauge(Collector):
    """The request-body bytes this process holds now (:class:`BodyBudget`), read at scrape."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "poolgrad_body_bytes_reserved",
            "Request-body bytes reserved by requests in flight (POOLGRAD_MAX_INFLIGHT_BODY_BYTES).",
            value=self._budget.reserved,
        )


class _CounterSeries:
    """One label value's count; ``inc`` takes one lock."""

    __slots__ = ("_lock", "created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._lock = threading.Lock()
        self.created = time.time()

    def inc(self) -> None:
        with self._lock:
            self.value += 1.0


class _HistogramSeries:
    """One label value's buckets, count and sum; ``observe`` takes one lock and a bisect."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose bound it does not exceed."""
        index = bisect.bisect_left(self._bounds, amount)
        with self._lock:
            self._counts[index] += 1
            self._sum += amount

    def snapshot(self) -> tuple[list[int], float]:
        """Per-bucket counts (not cumulative) and the sum, read together."""
        with self._lock:
            return list(self._counts), self._sum


_S = TypeVar("_S", _CounterSeries, _HistogramSeries)


class _LeanFamily(Collector, Generic[_S]):
    """A metric family by ``label_names`` whose series are looked up once and then updated under
    one lock of their own: prometheus_client's ``labels()`` validates and locks on every call,
    and its series take more locks per update (a histogram's walks its bounds in Python too,
    0.5-0.7 us). Exposed exactly as prometheus_client exposes its own (pinned by tests).
    ``labels(*values)`` returns the series to update (bind it once); the label values must be a
    bounded set."""

    kind: str

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: tuple[str, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._label_names = label_names
        self._series: dict[tuple[str, ...], _S] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def _new_series(self) -> _S:
        raise NotImplementedError

    def _add_samples(self, metric: Metric, named: dict[str, str], series: _S) -> None:
        raise NotImplementedError

    def labels(self, *values: str) -> _S:
        if len(values) != len(self._label_names):
            raise ValueError(f"{self._name} takes labels {self._label_names}, got {values}")
        with self._lock:
            series = self._series.get(values)
            if series is None:
                series = self._series[values] = self._new_series()
            return series

    def describe(self) -> Iterator[Metric]:
        yield Metric(self._name, self._documentation, self.kind)

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self._name, self._documentation, self.kind)
        with self._lock:
            series = list(self._series.items())
        for values, one in series:
            named = dict(zip(self._label_names, values, strict=True))
            self._add_samples(metric, named, one)
            metric.add_sample(f"{self._name}_created", named, one.created)
        yield metric


class LeanCounter(_LeanFamily[_CounterSeries]):
    """A counter by ``label_names``, exposed exactly as prometheus_client's ``Counter`` (its
    ``_total`` and ``_created`` samples; ``name`` without ``_total``)."""

    kind = "counter"

    def _new_series(self) -> _CounterSeries:
        return _CounterSeries()

    def _add_samples(self, metric: Metric, named: dict[str, str], series: _CounterSeries) -> None:
        metric.add_sample(f"{self._name}_total", named, series.value)


class LeanHistogram(_LeanFamily[_HistogramSeries]):
    """A histogram by ``label_names``, exposed exactly as prometheus_client's ``Histogram``
    (its buckets, count, sum and created samples); ``observe`` takes one lock and a bisect (a
    tiny gradient observes twice: request, engine)."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: tuple[str, ...],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = (*buckets, math.inf)
        super().__init__(name, documentation, label_names, registry)

    def _new_series(self) -> _HistogramSeries:
        return _HistogramSeries(self._bounds)

    def _add_samples(self, metric: Metric, named: dict[str, str], series: _HistogramSeries) -> None:
        counts, total = series.snapshot()
        cumulative = 0
        for bound, count in zip(self._bounds, counts, strict=True):
            cumulative += count
            le = floatToGoString(bound)  # type: ignore[no-untyped-call]
            metric.add_sample(f"{self._name}_bucket", {**named, "le": le}, float(cumulative))
        metric.add_sample(f"{self._name}_count", named, float(cumulative))
        metric.add_sample(f"{self._name}_sum", named, total)


class Metrics:
    """The collectors of one app, registered in its own :class:`CollectorRegistry`."""

    def __init__(self, store: SessionStore, body_budget: BodyBudget | None = None) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        self.requests = LeanCounter(
            "poolgrad_requests",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = LeanHistogram(
            "poolgrad_request_duration_seconds",
            "Time from request start to the end of the response, by method and route template.",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.engine_seconds = LeanHistogram(
            "poolgrad_engine_seconds",
            "Time spent in the engine per call, excluding decode and encode: a forward, a "
            "backward, or a gradient (both in one call: the stateless route with dA).",
            ("operation",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sessions_live = Gauge(
            "poolgrad_sessions_live",
            "Live sessions held by the store.",
            registry=self.registry,
        )
        self.state_bytes = Gauge(
            "poolgrad_state_bytes",
            "Bytes of cached forward state held by the store.",
            registry=self.registry,
        )
        self.registry.register(_StoreCounters(store))
        # (method, route, status) -> its counter and histogram series. ``labels()`` takes a
        # lock and validates on every call; the label values are a bounded set (see
        # service.middleware), so the series are looked up once each.
        self._request_children: dict[
            tuple[str, str, int], tuple[_CounterSeries, _HistogramSeries]
        ] = {}

        if body_budget is not None:
            self.registry.register(_BodyBudgetGauge(body_budget))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its duration, by bounded labels."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._request_children[key] = children
        count, latency = children
        count.inc()
        latency.observe(seconds)

    async def render(self) -> bytes:
        """The Prometheus text exposition, with the session gauges read from the store now."""
        try:
            usage = await self.store.usage()
        except StoreUnavailable as exc:
            # Metrics stay available while the store is not; the gauges keep their last value.
            logger.warning("metrics: store usage unavailable: %s", exc.detail)
        else:
            self.sessions_live.set(usage.sessions)
            self.state_bytes.set(usage.state_bytes)
        return generate_latest(self.registry)
