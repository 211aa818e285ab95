"""Simulated hospitals: determinism, layout, ranges, realism (sparsity, coupling, deterioration), heterogeneity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from fedehr.data import simulated
from fedehr.data.cohort import Cohort
from fedehr.data.sources import load_source
from fedehr.errors import InputError

VITALS = ("HR", "RespRate", "SpO2", "Urine")
# nanmean over stays that have no value of a feature in a window warns; NaN is the intended result there.
pytestmark = pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return simulated.load(n_stays=1500, n_sites=4, heterogeneity=0.5, seed=7)


def _col(c: Cohort, name: str) -> np.ndarray:
    return c.values[:, :, c.schema.temporal_index(name)]


def test_same_seed_same_cohort_other_seed_differs() -> None:
    a, b = simulated.load(n_stays=120, seed=3), simulated.load(n_stays=120, seed=3)
    c = simulated.load(n_stays=120, seed=4)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.static, b.static)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.sites, b.sites)
    assert not np.array_equal(a.values, c.values, equal_nan=True)
    assert not np.array_equal(a.counts, c.counts)


def test_layout_schema_and_meta(cohort: Cohort) -> None:
    s = cohort.schema
    assert cohort.values.shape == (1500, 48, len(simulated.TEMPORAL)) and cohort.static.shape == (1500, 4)
    assert s.source == "simulated" and s.site_by == "hospital" and s.labels == ("mortality",)
    assert cohort.site_names == ["hospital-1", "hospital-2", "hospital-3", "hospital-4"]
    assert cohort.meta["source"] == "simulated"
    assert {k: cohort.meta["simulated"][k] for k in ("n_sites", "heterogeneity", "seed")} == {
        "n_sites": 4, "heterogeneity": 0.5, "seed": 7}
    assert len(np.unique(cohort.stay_ids)) == 1500
    assert set(np.unique(cohort.labels).tolist()) == {0.0, 1.0}
    # NaN exactly where no measurement was recorded.
    np.testing.assert_array_equal(np.isfinite(cohort.values), cohort.counts > 0)


def test_values_respect_catalogue_ranges(cohort: Cohort) -> None:
    for j, spec in enumerate(cohort.schema.temporal):
        v = cohort.values[:, :, j]
        v = v[np.isfinite(v)]
        assert v.size > 0, spec.name
        assert v.min() >= spec.valid_min and v.max() <= spec.valid_max, spec.name
    for j, spec in enumerate(cohort.schema.static):
        v = cohort.static[:, j]
        v = v[np.isfinite(v)]
        assert v.min() >= spec.valid_min and v.max() <= spec.valid_max, spec.name
    assert set(np.unique(_col(cohort, "MechVent")[cohort.mask[:, :, 10]]).tolist()) <= {0.0, 1.0}
    gcs = _col(cohort, "GCS")
    assert np.array_equal(gcs[np.isfinite(gcs)], np.round(gcs[np.isfinite(gcs)]))


def test_prevalence_plausible(cohort: Cohort) -> None:
    assert 0.08 < cohort.label().mean() < 0.25


def test_labs_sparser_than_vitals_and_vitals_sometimes_repeat(cohort: Cohort) -> None:
    obs = cohort.mask.mean(axis=(0, 1))  # (F,) share of bins with a value
    vitals = [obs[cohort.schema.temporal_index(n)] for n in VITALS]
    labs = [obs[cohort.schema.temporal_index(n)] for n in simulated.LABS]
    assert min(vitals) > 0.7 and max(labs) < 0.3 and max(labs) < min(vitals) / 3
    hr = cohort.counts[:, :, cohort.schema.temporal_index("HR")]
    assert 0.05 < (hr > 1).mean() < 0.5  # some bins hold several measurements
    assert (hr == 0).mean() > 0.02  # and some hold none


def test_blood_pressure_coupling(cohort: Cohort) -> None:
    sbp, dbp, mean_ap = _col(cohort, "SysABP"), _col(cohort, "DiasABP"), _col(cohort, "MAP")
    ok = np.isfinite(sbp) & np.isfinite(dbp) & np.isfinite(mean_ap)
    assert ok.sum() > 1000
    np.testing.assert_allclose(mean_ap[ok], (sbp[ok] + 2 * dbp[ok]) / 3, atol=0.5)
    assert (sbp[ok] > dbp[ok]).all()
    # Coupling through the latent severity: stay means of HR and lactate correlate positively, MAP negatively.
    hr, lac = np.nanmean(_col(cohort, "HR"), 1), np.nanmean(_col(cohort, "Lactate"), 1)
    mp = np.nanmean(mean_ap, 1)
    ok = np.isfinite(hr) & np.isfinite(lac) & np.isfinite(mp)
    assert np.corrcoef(hr[ok], lac[ok])[0, 1] > 0.15
    assert np.corrcoef(mp[ok], lac[ok])[0, 1] < -0.15


def test_deterioration_before_death(cohort: Cohort) -> None:
    y = cohort.label() == 1
    lac, gcs = _col(cohort, "Lactate")[:, -12:], _col(cohort, "GCS")[:, -12:]
    assert np.nanmean(lac[y]) > 1.3 * np.nanmean(lac[~y])
    assert np.nanmean(gcs[y]) < np.nanmean(gcs[~y]) - 1
    # Deaths get worse over the window: lactate late minus early is larger for deaths than for survivors.
    trend = np.nanmean(_col(cohort, "Lactate")[:, -12:], 1) - np.nanmean(_col(cohort, "Lactate")[:, :12], 1)
    assert np.nanmean(trend[y]) > np.nanmean(trend[~y]) + 0.3


def test_mortality_is_learnable_from_48h_summaries(cohort: Cohort) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    v = cohort.values
    last_t = np.where(cohort.mask, np.arange(v.shape[1])[None, :, None], -1).max(axis=1)  # (N, F)
    last = np.take_along_axis(v, np.maximum(last_t, 0)[:, None, :], axis=1)[:, 0]
    last[last_t < 0] = np.nan
    x = np.concatenate([np.nanmean(v, axis=1), last, cohort.static], axis=1)
    y = cohort.label()
    with threadpool_limits(1):  # OpenMP threads oversubscribe a busy 2-core CI box
        clf = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(x[:1000], y[:1000])
    auc = roc_auc_score(y[1000:], clf.predict_proba(x[1000:])[:, 1])
    assert auc > 0.75


def _site_spread(c: Cohort) -> dict[str, float]:
    sites = c.by_site().values()
    return {
        "age": float(np.ptp([s.static[:, 0].mean() for s in sites])),
        "prevalence": float(np.ptp([s.label().mean() for s in sites])),
        "hr": float(np.ptp([np.nanmean(_col(s, "HR")) for s in sites])),
        "lab_rate": float(np.ptp([s.mask[:, :, s.schema.temporal_index("Creatinine")].mean() for s in sites])),
    }


def test_heterogeneity_knob() -> None:
    same = simulated.load(n_stays=1200, heterogeneity=0.0, seed=2)
    diff = simulated.load(n_stays=1200, heterogeneity=1.0, seed=2)
    a, b = _site_spread(same), _site_spread(diff)
    assert a["age"] < 4 and b["age"] > 8
    assert a["lab_rate"] < 0.03 and b["lab_rate"] > 0.08
    assert b["hr"] > 3 * a["hr"]
    assert b["prevalence"] > 0.08 and b["prevalence"] > 2 * a["prevalence"]
    # Identical hospitals: equal sizes and a prevalence table compatible with homogeneity.
    assert len(set((same.sites == s).sum() for s in same.site_names)) == 1
    table = [[int(((same.sites == s) & (same.label() == k)).sum()) for k in (0, 1)] for s in same.site_names]
    assert chi2_contingency(table).pvalue > 0.01
    table = [[int(((diff.sites == s) & (diff.label() == k)).sum()) for k in (0, 1)] for s in diff.site_names]
    assert chi2_contingency(table).pvalue < 1e-4


def test_grid_options_and_single_site() -> None:
    c = simulated.load(n_stays=50, hours=24, bin_hours=2, site_by="none", seed=0)
    assert c.values.shape == (50, 12, len(simulated.TEMPORAL)) and c.site_names == ["all"]
    hr = c.counts[:, :, c.schema.temporal_index("HR")]
    assert hr.mean() > 1.5  # about two hourly charts per 2 h bin
    via_registry = load_source("simulated", None, n_stays=50, hours=24, bin_hours=2, site_by="none", seed=0)
    np.testing.assert_array_equal(via_registry.counts, c.counts)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"heterogeneity": 1.5}, "heterogeneity"),
    ({"heterogeneity": "high"}, "heterogeneity"),
    ({"n_sites": 0}, "n_sites"),
    ({"n_stays": 3, "n_sites": 4}, "n_sites"),
    ({"seed": -1}, "seed"),
    ({"site_by": "ward"}, "site_by"),
    ({"colour": "red"}, "colour"),
])
def test_bad_options_raise(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as e:
        simulated.load(**{"n_stays": 10, **kwargs})  # type: ignore[arg-type]
    assert e.value.field == field


def test_no_path_and_never_detected(tmp_path) -> None:
    with pytest.raises(InputError, match="reads no files"):
        simulated.load(tmp_path, n_stays=10)
    assert simulated.detect(tmp_path) is False
