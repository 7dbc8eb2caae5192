"""Report evaluation: the metric contract, a lazy registry, statistics and the runner.

Run it with `radixpert evaluate --references R --candidates C`; see `radixpert evaluate --list`.
"""

from radixpert.errors import MetricUnavailable
from radixpert.evaluate.base import Metric, MetricResult

__all__ = ["Metric", "MetricResult", "MetricUnavailable"]
