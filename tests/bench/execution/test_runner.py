from __future__ import annotations

import pytest

from bench.execution.runner import pass_at_k


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    # n=5 samples: problems with 5, 0 and 1 correct
    result = pass_at_k([5, 0, 1], 5)
    assert set(result) == {"pass@1", "pass@5"}
    assert result["pass@1"] == pytest.approx((1 + 0 + 0.2) / 3)
    assert result["pass@5"] == pytest.approx((1 + 0 + 1) / 3)
    # n=10, c=2, k=5: 1 - C(8,5)/C(10,5) = 1 - 56/252
    assert pass_at_k([2], 10)["pass@5"] == pytest.approx(1 - 56 / 252)
