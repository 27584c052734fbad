"""Orchestration: chaining stages into pseudo-label rounds, leaderboard hooks, plateau stopping."""
