"""Latency histograms a pipeline can afford on every frame: a bucket count and a sum, no lock.

prometheus_client's Histogram takes a lock per observation (~1.4 µs here, twice per frame): 1.4 %
of a frame for a model that runs at 4,000 fps. One pipeline's output thread is the only writer
of its histograms, so a plain list and a float do (~0.3 µs); a scrape reads them (views.metrics),
computing the count from the buckets so that `_count` always equals the `+Inf` bucket.
"""

from __future__ import annotations

from bisect import bisect_left

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """Observations in seconds, counted per bucket (a value equal to a bound belongs to it: `le`)."""

    __slots__ = ("bounds", "counts", "sum_s")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum_s += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations <= le) for each bound and "+Inf", as the exposition wants them."""
        counts, running, result = list(self.counts), 0, []
        for bound, count in zip((*(repr(float(b)) for b in self.bounds), "+Inf"), counts):
            running += count
            result.append((bound, running))
        return result
