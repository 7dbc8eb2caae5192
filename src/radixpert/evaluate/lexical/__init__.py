"""lexical report metrics."""
