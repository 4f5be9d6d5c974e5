"""Trace detection: can anyone tell, from outputs or activations, that a model was erased?

``responses.py`` samples both models on two prompt sets and keeps the hidden states of the
first generated tokens; ``splits.py`` splits grouped by prompt; ``stats.py`` turns out-of-fold
predictions into accuracy with confidence intervals; one file per detector
(``text_classifier.py``, ``encoder.py``, ``activation_probe.py``, registered in
``expunge.registry.DETECTORS``); ``base.py`` runs ``expunge detect`` with its controls.
"""
