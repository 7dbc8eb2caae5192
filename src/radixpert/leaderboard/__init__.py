"""Benchmarks as data and the leaderboard: protocols, results per (model, benchmark), ranking."""
