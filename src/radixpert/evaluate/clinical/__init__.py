"""clinical report metrics."""
