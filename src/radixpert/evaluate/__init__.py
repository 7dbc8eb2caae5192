"""Report evaluation: the metric contract, a lazy registry, statistics and the runner.

Run it with `radixpert evaluate --references R --candidates C`; see `radixpert evaluate --list`.
"""

from radixpert.evaluate.base import Metric, MetricResult, MetricUnavailable

__all__ = ["Metric", "MetricResult", "MetricUnavailable"]
