"""Recording resolution: quanta learned from aggregate on-grid counts, synthetic values rounded to them."""

from __future__ import annotations

import numpy as np
import pytest

from fedehr.data import resolution as res


def _recorded(n: int = 4000, seed: int = 0) -> np.ndarray:
    """(n, 4) float32 columns recorded like HR (whole beats), FiO2 (steps of 0.05), pH (0.01) and a continuous
    one."""
    rng = np.random.default_rng(seed)
    hr = np.rint(rng.normal(85, 15, n))
    fio2 = np.rint(rng.uniform(0.21, 1.0, n) / 0.05) * 0.05
    ph = np.rint(rng.normal(7.38, 0.07, n) * 100) / 100
    cont = rng.lognormal(0.5, 0.8, n)
    return np.stack([hr, fio2, ph, cont], axis=1).astype(np.float32)


def test_quanta_are_recovered_from_float32_values():
    x = _recorded()
    on, total = res.grid_counts(x, np.ones_like(x, dtype=bool))
    q = res.choose_quantum(on, total, 0.99, np.ones(4, dtype=bool))
    np.testing.assert_array_equal(q, [1.0, 0.05, 0.01, 0.0])
    assert total.tolist() == [4000] * 4
    # a non-numeric feature (binary, categorical) is never rounded; a never-measured one neither
    q2 = res.choose_quantum(on, np.array([4000, 4000, 0, 4000]), 0.99, np.array([False, True, True, True]))
    np.testing.assert_array_equal(q2, [0.0, 0.05, 0.0, 0.0])


def test_the_share_decides_between_neighbouring_steps():
    """98.5 % whole numbers and 1.5 % halves: a step of 1 needs a share <= 0.985, else the grid is 0.5."""
    x = np.r_[np.arange(985) % 50 + 60.0, np.arange(15) + 60.5].astype(np.float32)[:, None]
    on, total = res.grid_counts(x, np.ones_like(x, dtype=bool))
    assert res.choose_quantum(on, total, 0.99, np.array([True]))[0] == 0.5
    assert res.choose_quantum(on, total, 0.98, np.array([True]))[0] == 1.0


def test_temporal_counts_use_single_measurements_and_sites_add_up():
    """Bins holding 2 measurements store a mean (a half here): they must not lower the grid; the sums of two
    sites equal the pooled counts."""
    rng = np.random.default_rng(1)
    values = np.rint(rng.normal(80, 10, (60, 6, 1))).astype(np.float32)
    counts = rng.integers(0, 3, (60, 6, 1)).astype(np.uint16)
    values[counts == 2] += 0.5                                 # the mean of two whole numbers
    values[counts == 0] = np.nan
    on, total = res.temporal_grid_counts(values, counts)
    assert total[0] == (counts == 1).sum() and res.choose_quantum(on, total, 0.99, np.array([True]))[0] == 1.0
    a, b = res.temporal_grid_counts(values[:25], counts[:25]), res.temporal_grid_counts(values[25:], counts[25:])
    np.testing.assert_array_equal(a[0] + b[0], on)
    np.testing.assert_array_equal(a[1] + b[1], total)


def test_continuous_large_values_are_not_taken_for_a_fine_grid():
    """float32 values of a few thousand are multiples of 10^-4 to within float precision; the MAX_UNITS bound
    keeps a continuous feature unrounded."""
    x = np.random.default_rng(2).uniform(1000, 5000, (3000, 1)).astype(np.float32)
    on, total = res.grid_counts(x, np.ones_like(x, dtype=bool))
    assert res.choose_quantum(on, total, 0.99, np.array([True]))[0] == 0.0


def test_round_to_grid_uses_the_count_and_keeps_nan_and_range():
    values = np.array([[1.94, 1.94, np.nan, 0.99, 7.4449]], dtype=np.float32)
    counts = np.array([[1, 3, 0, 1, 1]])
    quantum = np.array([0.1, 0.1, 0.1, 0.2, 0.0])
    lo, hi = np.array([0.0, 0.0, 0.0, 0.0, 6.5]), np.array([5.0, 5.0, 5.0, 0.9, 8.0])
    out = res.round_to_grid(values.copy(), counts, quantum, lo, hi)
    assert out[0, 0] == np.float32(1.9)                        # the float32 of 1.9 exactly, as a parsed 1.9
    assert out[0, 1] == np.float32(29 / 15)                    # 3 measurements: the grid 0.1 / 3
    assert np.isnan(out[0, 2]) and out[0, 3] == np.float32(0.9)  # 1.0 on the grid, clipped to the range
    assert out[0, 4] == np.float32(7.4449)                     # no grid: untouched
    again = res.round_to_grid(out.copy(), counts, quantum, lo, hi)
    keep = [0, 1, 2, 4]                                        # idempotent on the grid (0.9 is a bound off it)
    np.testing.assert_array_equal(again[:, keep], out[:, keep])
    static = res.round_to_grid(np.array([[63.7, 170.26]], dtype=np.float32), None, np.array([1.0, 0.1]),
                               np.array([0.0, 0.0]), np.array([120.0, 250.0]))
    np.testing.assert_array_equal(static, np.array([[64.0, 170.3]], dtype=np.float32))


@pytest.mark.parametrize("q", res.QUANTA)
def test_grid_scale_is_exact_for_decimal_steps(q):
    s = res.grid_scale(np.array([q]))[0]
    assert s == pytest.approx(1 / q, rel=1e-12)
    if q < 1:
        assert s == round(s)                                   # 1/0.1 = 10 exactly, not 9.999…
