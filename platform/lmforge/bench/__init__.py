"""Benchmarks (``lmforge bench <name> key=value ...``): speed targets measured on real stages, JSON out."""
