"""Stressors: attack a model (relearn, fine-tune, quantize, resample, re-prompt) and re-audit.

One file per stressor; ``base.py`` holds the shared runner and the curve. Registered in
``expunge.registry.STRESSORS``; run with ``expunge stress NAME --model M --imprint I --out DIR``.
"""
