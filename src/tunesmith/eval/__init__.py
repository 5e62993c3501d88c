"""Evaluation: generation, task metrics, plots."""
