"""Canary exposure against TF-Privacy's secret-sharer code.

Inputs: ``parity_inputs.EXPOSURE_REFERENCES`` (log-perplexities of 100 reference secrets) and
``EXPOSURE_CANARIES`` (three canaries; the third ties a reference).
"""

from __future__ import annotations

from parity_inputs import EXPOSURE_CANARIES, EXPOSURE_REFERENCES

from expunge.audit.exposure import interpolated_exposure, skewnorm_exposure

# tensorflow/privacy tensorflow_privacy/privacy/privacy_tests/secret_sharer/exposures.py:
# compute_exposure_extrapolation({"c": canaries}, references) and
# compute_exposure_interpolation({"c0": [c0], ...}, references)
TFP_EXTRAPOLATION = [9.843769688621629, 1.4736771967649724, 3.006094739429573]
TFP_INTERPOLATION = [6.643856189774724, 1.3959286763311392, 2.7369655941662057]


def test_extrapolated_exposure_matches_tf_privacy(parity) -> None:
    ours = [skewnorm_exposure(c, EXPOSURE_REFERENCES) for c in EXPOSURE_CANARIES]
    parity("exposure extrapolated / TF-Privacy exposures.py", ours, TFP_EXTRAPOLATION, rel=1e-9)


def test_interpolated_exposure_matches_tf_privacy(parity) -> None:
    ours = [interpolated_exposure(c, EXPOSURE_REFERENCES) for c in EXPOSURE_CANARIES]
    parity("exposure interpolated / TF-Privacy exposures.py", ours, TFP_INTERPOLATION,
           abs=1e-15)  # fmt: skip
