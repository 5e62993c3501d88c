"""Scoring a model: generation, task metrics with bootstrap intervals; no training."""
