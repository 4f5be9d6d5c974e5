"""Parity tests: expunge against golden values from the reference implementations.

``parity(name, ours, golden, ...)`` asserts the two agree within the given tolerance and keeps
the largest absolute difference per name; ``pytest tests/parity -q`` prints them at the end (the
numbers in ``docs/results/parity.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

LARGEST: dict[str, float] = {}


@pytest.fixture
def parity() -> Callable[..., None]:
    def check(
        name: str,
        ours: float | Sequence[float],
        golden: float | Sequence[float],
        rel: float = 0.0,
        abs: float = 0.0,
    ) -> None:
        ours_arr = np.asarray(ours, dtype=np.float64)
        golden_arr = np.asarray(golden, dtype=np.float64)
        assert ours_arr.shape == golden_arr.shape, (name, ours_arr.shape, golden_arr.shape)
        largest = float(np.max(np.abs(ours_arr - golden_arr), initial=0.0))
        LARGEST[name] = max(LARGEST.get(name, 0.0), largest)
        np.testing.assert_allclose(ours_arr, golden_arr, rtol=rel, atol=abs, err_msg=name)

    return check


def pytest_terminal_summary(terminalreporter) -> None:
    if not LARGEST:
        return
    terminalreporter.section("parity: largest |expunge - reference|")
    width = max(len(name) for name in LARGEST)
    for name in sorted(LARGEST):
        terminalreporter.write_line(f"{name:<{width}}  {LARGEST[name]:.3g}")
