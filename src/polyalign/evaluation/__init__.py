"""Evaluation metrics (pure functions on lists and arrays) and the ablation report."""
