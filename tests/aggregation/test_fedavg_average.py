"""FedAvg weighted averaging on hand-computable arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fedehr.aggregation.fedavg import keep_own_arrays, keep_own_columns, normalise_weights, weighted_average
from fedehr.errors import FedEHRError


def test_weighted_average_by_hand():
    a = {"w": np.array([[0.0, 2.0]], dtype=np.float32), "b": np.array([1.0], dtype=np.float32)}
    b = {"w": np.array([[4.0, 6.0]], dtype=np.float32), "b": np.array([5.0], dtype=np.float32)}
    out = weighted_average([a, b], [1, 3])  # α = (0.25, 0.75)
    np.testing.assert_allclose(out["w"], [[3.0, 5.0]])
    np.testing.assert_allclose(out["b"], [4.0])
    assert out["w"].dtype == np.float32


def test_bad_inputs_raise():
    a = {"w": np.zeros(2)}
    with pytest.raises(FedEHRError, match="shapes"):
        weighted_average([a, {"w": np.zeros(3)}], [1, 1])
    with pytest.raises(FedEHRError, match="weights"):
        normalise_weights([0, 0])
    with pytest.raises(FedEHRError, match="2 states but 1 weights"):
        weighted_average([a, a], [1])


def test_site_owned_columns_are_copied_not_averaged():
    """Column 1 + k of "w" belongs to site k; the other columns and the other arrays stay averaged."""
    sites = {"a": {"w": np.array([[1.0, 2.0, 3.0]]), "b": np.array([1.0])},
             "b": {"w": np.array([[5.0, 6.0, 7.0]]), "b": np.array([3.0])}}
    avg = weighted_average(list(sites.values()), [1, 1])
    out = keep_own_columns(avg, sites, "w", {"a": 1, "b": 2})
    np.testing.assert_array_equal(out["w"], [[3.0, 2.0, 7.0]])
    np.testing.assert_array_equal(out["b"], [2.0])
    np.testing.assert_array_equal(avg["w"], [[3.0, 4.0, 5.0]])  # the input is not modified
    # Only the replying sites' columns are replaced; the others keep the averaged value.
    out = keep_own_columns(avg, {"b": sites["b"]}, "w", {"b": 2})
    np.testing.assert_array_equal(out["w"], [[3.0, 4.0, 7.0]])


def test_site_owned_arrays_are_copied_not_averaged():
    sites = {"a": {"dec.0.w": np.array([1.0]), "dec.1.w": np.array([1.0]), "x": np.array([0.0])},
             "b": {"dec.0.w": np.array([3.0]), "dec.1.w": np.array([5.0]), "x": np.array([2.0])}}
    avg = weighted_average(list(sites.values()), [1, 1])
    out = keep_own_arrays(avg, sites, {"a": "dec.0.", "b": "dec.1."})
    assert (out["dec.0.w"][0], out["dec.1.w"][0], out["x"][0]) == (1.0, 5.0, 1.0)
    assert avg["dec.0.w"][0] == 2.0  # the input is not modified
