"""Poisoned-data identification: score every row of a training set (``expunge scan``).

``base.py`` is the stage (``ScanConfig``); each scorer is one file registered in
``expunge.registry.SCORERS``: ``mspc`` (MSPC adapted to text), ``loss_early`` (ABL-style),
``spectral`` (spectral signatures), ``clustering`` (activation clustering).
"""
