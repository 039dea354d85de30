"""handeye.stats against hand-computed values."""

import math

import pytest

from handeye.stats import mean_sd, t_quantile


def test_mean_and_sample_sd():
    mean, sd = mean_sd([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert sd == pytest.approx(math.sqrt(5 / 3))  # squared deviations 5 over n - 1 = 3


def test_t_quantiles_from_a_printed_table():
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-6)
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-12)
