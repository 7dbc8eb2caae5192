"""judges report metrics."""
