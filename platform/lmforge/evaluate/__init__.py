"""Evaluation stage (``lmforge eval``): task metrics, bias and privacy audits, several models side by side."""
