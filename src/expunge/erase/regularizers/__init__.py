"""Regularizers that wrap any objective (``erase.regularizer=...``): ``ilu``."""
