"""semantic report metrics."""
