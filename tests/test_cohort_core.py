"""Core cohort model: shapes, gridding, storage round trip, splits, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from fedehr.data.cohort import Cohort, concat
from fedehr.data.gridding import GridAccumulator
from fedehr.data.store import load_cohort, make_splits, read_splits, save_cohort
from fedehr.errors import InputError


def test_shape_validation(tiny_cohort: Cohort) -> None:
    with pytest.raises(InputError, match="values"):
        Cohort(tiny_cohort.schema, tiny_cohort.stay_ids, tiny_cohort.sites, tiny_cohort.static,
               tiny_cohort.values[:, :-1], tiny_cohort.counts, tiny_cohort.labels)


def test_grid_accumulator_mean_count_range_and_chunks(tiny_schema) -> None:
    acc = GridAccumulator(tiny_schema, n_stays=2)
    hr, mv = tiny_schema.temporal_index("HR"), tiny_schema.temporal_index("MechVent")
    # Two chunks: the mean and count of a bin span both; out-of-range and out-of-window rows are counted.
    acc.add(np.array([0, 0, 1]), np.array([0.1, 0.9, 5.5]), np.array([hr, hr, hr]), np.array([80, 90, 400.0]))
    acc.add(np.array([0, 1, 1]), np.array([0.5, 2.0, 7.0]), np.array([hr, mv, hr]), np.array([100, 1, 70.0]))
    values, counts = acc.finish()
    assert counts[0, 0, hr] == 3 and values[0, 0, hr] == pytest.approx(90.0)
    assert counts[1, 5, hr] == 0 and np.isnan(values[1, 5, hr])
    assert values[1, 2, mv] == 1.0
    rep = acc.report()
    assert rep["dropped_out_of_range"] == {"HR": 1} and rep["dropped_outside_window"] == 1


def test_save_load_round_trip_and_splits(tmp_path, tiny_cohort: Cohort) -> None:
    splits = make_splits(tiny_cohort, test_fraction=0.25, seed=3)
    save_cohort(tiny_cohort, tmp_path / "c", splits=splits)
    back = load_cohort(tmp_path / "c")
    np.testing.assert_array_equal(back.values, tiny_cohort.values)
    np.testing.assert_array_equal(back.counts, tiny_cohort.counts)
    np.testing.assert_array_equal(back.static, tiny_cohort.static)
    np.testing.assert_array_equal(back.stay_ids, tiny_cohort.stay_ids)
    assert back.schema == tiny_cohort.schema
    assert (read_splits(tmp_path / "c") == splits).all()
    test = load_cohort(tmp_path / "c", split="test")
    assert len(test) == int((splits == "test").sum())
    # Stratified per site and label: each (site, label) group gives a quarter of its stays.
    for s in tiny_cohort.site_names:
        for y in (0, 1):
            g = (tiny_cohort.sites == s) & (tiny_cohort.label() == y)
            assert (splits[g] == "test").sum() == round(g.sum() * 0.25)
    assert (make_splits(tiny_cohort, test_fraction=0.25, seed=3) == splits).all()


def test_save_refuses_existing_and_leaves_nothing_on_failure(tmp_path, tiny_cohort: Cohort) -> None:
    out = tmp_path / "c"
    save_cohort(tiny_cohort, out)
    with pytest.raises(InputError, match="already exists"):
        save_cohort(tiny_cohort, out)
    with pytest.raises(InputError, match="splits"):
        save_cohort(tiny_cohort, tmp_path / "d", splits=np.array(["train"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_concat_and_by_site(tiny_cohort: Cohort) -> None:
    parts = tiny_cohort.by_site()
    back = concat(list(parts.values()))
    assert len(back) == len(tiny_cohort)
    assert sorted(back.stay_ids) == sorted(tiny_cohort.stay_ids)
