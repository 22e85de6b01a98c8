"""Evaluation: metrics (zero-shot accuracy, recall@k), runners and plots."""
