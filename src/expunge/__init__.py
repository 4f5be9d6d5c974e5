"""expunge: take an imprint out of a language model and prove it is gone."""

__version__ = "0.1.0"
