"""The FedEHR-Gen workflow family end to end through the in-process driver: every method, resume, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_tiny_cohort
from fedehr.algorithms import inprocess
from fedehr.algorithms.fedehr_gen import build_plan
from fedehr.algorithms.protocol import Reply, SiteContext, Task
from fedehr.algorithms.registry import make_workflow
from fedehr.algorithms.site import beta_schedule, count_histogram, handle, label_patterns, seed_for
from fedehr.config import DIFFUSION_METHODS, METHODS, load_config
from fedehr.data.catalogue import static_specs, temporal_specs
from fedehr.data.schema import Schema
from fedehr.errors import FedEHRError

TINY = ["device=cpu", "eval_sample=0", "ae.hidden=[8, 4]", "ae.latent=3", "tcvae.hidden=8", "tcvae.latent=3",
        "tcvae.cond_dim=4", "tcvae.time_dim=4", "stage1.rounds=2", "stage1.local_epochs=1", "stage1.batch_size=16",
        "stage2.rounds=2", "stage2.batch_size=16", "matching.sweeps=2", "local_site=site1",
        "matching.retrain_epochs=1", "matching.site_init=independent"]  # FedMA's full path


@pytest.fixture(scope="module")
def cohorts():
    schema = Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "MechVent"]),
                    static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1, source="test")
    return make_tiny_cohort(schema, n=90, seed=0, n_sites=3), make_tiny_cohort(schema, n=60, seed=1, n_sites=3)


def _run(method, cohorts, extra=(), handler=handle):
    cfg = load_config(None, [*TINY, f"method={method}", *extra])
    wf = make_workflow(cfg)
    sites = inprocess.sites_for(cfg, *cohorts)
    errors: dict[str, list[str]] = {}
    inprocess.run(wf, sites, handler=handler, errors=errors)
    return wf, errors


@pytest.mark.parametrize("method", [m for m in METHODS if m not in DIFFUSION_METHODS])
def test_every_method_runs_end_to_end(method, cohorts):
    wf, errors = _run(method, cohorts)
    assert not errors and wf.done and wf.next_task() is None
    m = wf.metrics()
    expected_sites = {"centralized": ["pooled"], "local": ["site1"]}.get(method, ["site0", "site1", "site2"])
    assert m["sites"] == expected_sites
    tc = [e for e in m["rounds"] if e["action"] == "tcvae-train"]
    assert len(tc) == 2 and all(sorted(e["weights"]) == expected_sites for e in tc)
    assert all(abs(sum(e["weights"].values()) - 1) < 1e-9 for e in tc)
    assert all(np.isfinite(list(e["loss"].values())).all() for e in tc)
    actions = {e["action"] for e in m["rounds"]}
    assert ("ae-retrain" in actions) == (method == "fedehr-gen")
    assert ("ae-train" in actions) == (method != "fedavg-direct")
    if method == "fedehr-gen":
        matched = [e["matching"] for e in m["rounds"] if "matching" in e]
        assert [x["layer"] for x in matched[:5]] == ["enc.0", "enc.1", "enc.2", "dec.0", "dec.1"]
        assert all(x["cost_after"] <= x["cost_before"] + 1e-9 for x in matched)
        assert m["aggregation"]["stage2"] == "divergence-softmax"
    else:
        assert all(e["rule"] == "fedavg" for e in tc)
    gen = wf.generator()
    assert gen.site_columns == (0 if method in ("centralized", "local") else 3)  # one site: no site one-hot
    syn = gen.sample(20, seed=0)
    assert syn.values.shape == (20, 6, 5) and set(syn.sites) == {"synthetic"}
    json.dumps(m)  # metrics are JSON-able


def test_fedavg_matches_fedehr_gen_epoch_budget(cohorts):
    """FedAvg-style stage 1 spends as many local epochs per round as FedEHR-Gen (train + retrains)."""
    wf, _ = _run("fedavg", cohorts, ["matching.retrain_epochs=2"])
    assert wf.metrics()["aggregation"]["stage1_epochs_per_round"] == 1 + 5 * 2
    cfg = load_config(None, [*TINY, "matching.retrain_epochs=0"])
    assert [k[0] for k in build_plan(cfg)].count("ae-match") == 2 * 5


ALLOWED = ("ae/", "tcvae/", "opt/", "stats/", "grid/")
ALLOWED_EXACT = {"count_hist", "label_patterns", "count", "sum", "sumsq", "post_mean", "post_var",
                 "prior_n", "prior_sum", "prior_sumsq", "acf_sums", "observed_sq", "coobserved",
                 "within_sums", "observed_cross", "repeat_counts"}


@pytest.mark.parametrize("method", ["fedehr-gen", "centralized"])
def test_replies_carry_only_weights_and_aggregates(method, cohorts):
    """No reply holds per-stay arrays: only model weights, optimiser moments and aggregate statistics."""
    seen: list[Reply] = []

    def spy(task: Task, ctx: SiteContext) -> Reply:
        r = handle(task, ctx)
        seen.append(r)
        return r

    # every optional aggregate on, so that each one is checked
    _run(method, cohorts, ["sampling.calibrate_intensity=true", "sampling.calibrate_within=true",
                           "sampling.calibrate_repeats=true", "sampling.intensity_min_sd=0.004"], handler=spy)
    names = {k for r in seen for k in r.arrays}
    assert {"observed_cross", "within_sums", "coobserved", "observed_sq", "repeat_counts"} <= names
    assert names and all(k.startswith(ALLOWED) or k in ALLOWED_EXACT for k in names), names
    n_sites = {30, 90}  # stays per site / pooled
    for r in seen:
        for k, v in r.arrays.items():
            if not k.startswith(("ae/", "tcvae/", "opt/")):
                assert not set(np.shape(v)) & n_sites, (k, np.shape(v))


def _drive(wf, sites, steps=None):
    """Run ``steps`` tasks (all when None) of ``wf`` over ``sites``; returns the number run."""
    k = 0
    while (steps is None or k < steps) and (task := wf.next_task()) is not None:
        wanted = wf.participants()
        replies = [handle(task.for_site(s), c) for s, c in sites.items() if wanted is None or s in wanted]
        wf.receive(task, replies, [])
        k += 1
    return k


def _through_disk(state):
    """What a runtime's checkpoint does: arrays copied, the rest through JSON."""
    return {k: (np.array(v) if k != "meta" else json.loads(json.dumps(v))) for k, v in state.items()}


@pytest.mark.parametrize(("method", "stop"), [("fedehr-gen", 5), ("fedehr-gen", 13), ("centralized", 3)])
def test_resume_equals_an_uninterrupted_run(method, stop, cohorts):
    cfg = load_config(None, [*TINY, f"method={method}"])
    full = make_workflow(cfg)
    _drive(full, inprocess.sites_for(cfg, *cohorts))

    first = make_workflow(cfg)
    assert _drive(first, inprocess.sites_for(cfg, *cohorts), stop) == stop
    resumed = make_workflow(cfg)
    resumed.load_state_dict(_through_disk(first.state_dict()))
    assert resumed.step == first.step
    _drive(resumed, inprocess.sites_for(cfg, *cohorts))  # fresh site contexts: nothing cached survives
    for name in ("ae", "tcvae"):
        a, b = getattr(full, name), getattr(resumed, name)
        assert a is not None and sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}/{k}")
    assert full.sampling == resumed.sampling
    assert [e["action"] for e in full.history] == [e["action"] for e in resumed.history]


def test_resume_refuses_another_configuration(cohorts):
    cfg = load_config(None, [*TINY, "method=fedavg"])
    wf = make_workflow(cfg)
    _drive(wf, inprocess.sites_for(cfg, *cohorts), 3)
    other = make_workflow(load_config(None, [*TINY, "method=fedavg", "stage2.rounds=5"]))
    with pytest.raises(FedEHRError, match="stage2"):
        other.load_state_dict(wf.state_dict())
    same_but_device = make_workflow(load_config(None, [*TINY, "method=fedavg", "round_timeout_s=5"]))
    same_but_device.load_state_dict(wf.state_dict())  # runtime-only settings may change


def _failing(site: str, action: str, after_step: int = 0):
    def handler(task: Task, ctx: SiteContext) -> Reply:
        if ctx.site == site and task.action == action and int(task.config["step"]) >= after_step:
            raise RuntimeError(f"{site} is down")
        return handle(task, ctx)

    return handler


def test_a_failing_site_is_recorded_and_the_run_continues(cohorts):
    plan = build_plan(load_config(None, [*TINY, "method=fedehr-gen"]))
    last_tcvae = max(i for i, k in enumerate(plan) if k[0] == "tcvae-train")
    wf, errors = _run("fedehr-gen", cohorts, ["min_sites=2"], handler=_failing("site1", "tcvae-train", last_tcvae))
    assert wf.done and "site1 is down" in errors["site1"][0]
    last = [e for e in wf.metrics()["rounds"] if e["action"] == "tcvae-train"][-1]
    assert last["missing"] == ["site1"] and sorted(last["weights"]) == ["site0", "site2"]
    # A site that fails a matching retrain keeps its matched (not retrained) layers; the run goes on.
    wf2, errors2 = _run("fedehr-gen", cohorts, ["min_sites=2"], handler=_failing("site2", "ae-retrain"))
    assert wf2.done and errors2["site2"]
    retrains = [e for e in wf2.metrics()["rounds"] if e["action"] == "ae-retrain"]
    assert retrains and all(e["missing"] == ["site2"] for e in retrains)


def test_too_few_sites_end_the_run_with_a_clear_error(cohorts):
    with pytest.raises(FedEHRError, match=r"fewer than the 3 required \(min_sites\); missing: site1"):
        _run("fedavg", cohorts, ["min_sites=3"], handler=_failing("site1", "stats"))


def test_sites_must_share_one_schema(cohorts):
    train, _ = cohorts
    cfg = load_config(None, [*TINY, "method=fedavg"])
    sites = inprocess.sites_for(cfg, train)
    other = Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate"]), static=static_specs(["Age", "Gender"]),
                   hours=6, bin_hours=1)
    sites["site2"].train = make_tiny_cohort(other, n=20, seed=3, n_sites=1)
    with pytest.raises(FedEHRError, match=r"do not share one schema.*site2.*MechVent"):
        inprocess.run(make_workflow(cfg), sites)


def test_site_condition_can_be_switched_off_and_a_stranger_is_refused(cohorts):
    wf, errors = _run("fedavg", cohorts, ["tcvae.site_condition=false"])
    assert not errors and wf.generator().site_columns == 0
    cfg = load_config(None, [*TINY, "method=fedavg"])
    sites = inprocess.sites_for(cfg, *cohorts)
    wf = make_workflow(cfg)
    task = wf.next_task()
    while task.action != "tcvae-train":
        wf.receive(task, [handle(task, ctx) for ctx in sites.values()], [])
        task = wf.next_task()
    stranger = Task(task.action, {**task.config, "sites": ["site0", "site1", "siteX"]}, task.arrays)
    with pytest.raises(FedEHRError, match="'site2' is not one of the run's sites"):
        handle(stranger, sites["site2"])


@pytest.mark.parametrize("method", ["fedehr-gen", "fedavg-direct"])
def test_presence_indicators_train_per_site_and_gate_the_sample(method, cohorts):
    """tcvae.presence: each site hands its stays' presence indicators to the TCVAE objective (e); sampled stays
    observe features as their presence draws say."""
    import torch

    from fedehr.algorithms.site import _tcvae_inputs
    from fedehr.models.encoding import presence

    train = cohorts[0].subset(np.ones(len(cohorts[0]), dtype=bool))  # a copy: the fixture is shared
    train.counts[::4, :, 3] = 0  # Lactate never measured in a quarter of the stays
    train.values[::4, :, 3] = np.nan
    wf, errors = _run(method, (train, cohorts[1]), ["tcvae.presence=true"])
    assert not errors
    gen = wf.generator()
    assert gen.tcvae.n_presence == 5 and gen.tcvae.s_dim == gen.layout.s_dim
    ctx = SiteContext("site1", train.site("site1"))
    data = {"s": torch.zeros(len(ctx.train), gen.layout.s_dim), "y": torch.zeros(len(ctx.train), 2)}
    task = Task("tcvae-train", {"cfg": json.dumps(wf.cfg.to_dict()), "sites": ["site0", "site1", "site2"]})
    got = _tcvae_inputs(task, ctx, wf.cfg, data)
    np.testing.assert_array_equal(got["e"].numpy(), presence(ctx.train.counts))
    assert got["y"][:, 2:].argmax(1).eq(1).all()  # the site one-hot as before
    syn = gen.sample(400, seed=1)
    seen = np.isfinite(syn.values).any(1)
    assert 0.05 < 1 - seen[:, 3].mean() < 0.6  # the sample has stays without Lactate, as the data had


def test_acf_calibration_runs_from_site_sums(cohorts):
    """sampling.calibrate_acf: sites send lag-1 sums (no per-stay values); the run stores the pooled target and
    one noise ρ per temporal feature, and records them in the prior-stats step."""
    from fedehr.evaluation.lags import lag_correlation, lag_sums

    wf, errors = _run("fedavg", cohorts, ["sampling.calibrate_acf=true"])
    assert not errors
    want = lag_correlation(lag_sums(cohorts[0].values, 1))  # the pooled training stays, computed directly
    got = np.array([np.nan if a is None else a for a in wf.sampling["acf_target"]])
    np.testing.assert_allclose(got, want, rtol=1e-9, equal_nan=True)
    rho = wf.sampling["numeric_rho"]
    assert len(rho) == 5 and all(0.0 <= r <= 0.995 for r in rho)
    last = [e for e in wf.metrics()["rounds"] if e["action"] == "prior-stats"][-1]
    assert sorted(last["numeric_rho"]) == sorted(cohorts[0].schema.temporal_names)
    wf2, _ = _run("fedavg", cohorts, ["sampling.calibrate_acf=false"])
    assert "numeric_rho" not in wf2.sampling and "acf_target" not in wf2.sampling


def test_dispersion_calibration_runs_from_site_sums(cohorts):
    """sampling.calibrate_dispersion: sites send Σ_i o_if² (no per-stay values); the run stores the pooled mean
    square of observed bins per stay and one mask gain per temporal feature, and records them; off, or with
    calibrate_mask off, neither is sent nor fitted."""
    wf, errors = _run("fedavg", cohorts, [])  # on by default
    assert not errors
    o = (cohorts[0].counts > 0).sum(axis=1).astype(np.float64)  # (N, F) the pooled training stays, directly
    np.testing.assert_allclose(wf.sampling["observed_sq"], (o * o).mean(0), rtol=1e-12)
    gain = np.asarray(wf.sampling["mask_scale"])
    assert gain.shape == (5,) and (gain >= 0).all() and (gain <= 4).all()
    last = [e for e in wf.metrics()["rounds"] if e["action"] == "prior-stats"][-1]
    assert sorted(last["mask_scale"]) == sorted(cohorts[0].schema.temporal_names)
    for off in ("sampling.calibrate_dispersion=false", "sampling.calibrate_mask=false"):
        wf2, _ = _run("fedavg", cohorts, [off])
        assert "mask_scale" not in wf2.sampling and "observed_sq" not in wf2.sampling


def test_coobservation_calibration_runs_from_site_sums(cohorts):
    """sampling.calibrate_coobservation (on by default): sites send Σ_{i,t} o_itf o_itg (an F × F sum, no per-stay
    values); the run stores the pooled co-observed share of cells and a valid mask correlation matrix, records
    it, and samples with it; off, neither is sent nor fitted."""
    from fedehr.data.fedstats import coobserved_bins

    wf, errors = _run("fedavg", cohorts, [])
    assert not errors
    train = cohorts[0]
    want = coobserved_bins(train.counts) / (len(train) * train.schema.n_bins)
    np.testing.assert_allclose(wf.sampling["coobserved_rate"], want, rtol=1e-12)
    r = np.asarray(wf.sampling["mask_corr"])
    assert r.shape == (5, 5) and np.allclose(np.diag(r), 1.0) and np.linalg.eigvalsh(r).min() > 0
    last = [e for e in wf.metrics()["rounds"] if e["action"] == "prior-stats"][-1]
    assert set(last["mask_corr"]) == {"pairs_above_0.5", "max"}
    assert wf.generator()._plan("cpu").sampler.mask_chol_t is not None
    wf2, _ = _run("fedavg", cohorts, ["sampling.calibrate_coobservation=false"])
    assert "mask_corr" not in wf2.sampling and "coobserved_rate" not in wf2.sampling
    assert wf2.generator()._plan("cpu").sampler.mask_chol_t is None


def test_intensity_calibration_runs_from_site_sums(cohorts):
    """sampling.calibrate_intensity (off by default): sites send Σ_i o_if o_ig (an F × F sum over their stays);
    the run stores the pooled E[o_f o_g], fits a map over the features whose stay-level logits vary, records
    which, and samples with it; off, nothing is sent or fitted."""
    # the tiny model's stay-mean logits vary by 0.005-0.02: a threshold below that lets three features take part
    wf, errors = _run("fedavg", cohorts, ["sampling.calibrate_intensity=true", "sampling.intensity_min_sd=0.004"])
    assert not errors
    o = (cohorts[0].counts > 0).sum(axis=1).astype(np.float64)  # (N, F) the pooled training stays, directly
    np.testing.assert_allclose(wf.sampling["observed_cross"], o.T @ o / len(o), rtol=1e-12)
    imap = wf.sampling["intensity_map"]
    k = len(imap["cols"])
    assert k >= 2 and np.asarray(imap["shift"]).shape == (k, k) and (np.asarray(imap["sd"]) > 0).all()
    last = [e for e in wf.metrics()["rounds"] if e["action"] == "prior-stats"][-1]
    names = cohorts[0].schema.temporal_names
    assert last["intensity_map"]["features"] == [names[j] for j in imap["cols"]]
    assert wf.generator()._plan("cpu").sampler.intensity is not None
    assert len(wf.generator().sample(50, seed=0)) == 50
    wf2, _ = _run("fedavg", cohorts, [])
    assert "intensity_map" not in wf2.sampling and "observed_cross" not in wf2.sampling
    assert wf2.generator()._plan("cpu").sampler.intensity is None

def test_repeat_calibration_runs_from_site_counts(cohorts):
    """sampling.calibrate_repeats (on by default): sites send two counts per feature; the run stores the pooled
    repeat share, fits probabilities in [0, 1] (0 for the binary MechVent), records them and samples with them;
    off, nothing is sent or fitted."""
    from fedehr.data.fedstats import repeat_counts

    wf, errors = _run("fedavg", cohorts, [])
    assert not errors and wf.cfg.sampling.calibrate_repeats
    pairs, same = repeat_counts(cohorts[0].values)
    np.testing.assert_allclose(wf.sampling["repeat_target"], same / pairs, rtol=1e-12)
    h = np.asarray(wf.sampling["repeat_prob"])
    assert h.shape == (5,) and ((h >= 0) & (h <= 1)).all() and h[4] == 0.0
    last = [e for e in wf.metrics()["rounds"] if e["action"] == "prior-stats"][-1]
    assert sorted(last["repeat_prob"]) == sorted(cohorts[0].schema.temporal_names)
    assert (wf.generator()._plan("cpu").sampler.repeat is not None) == bool((h > 0).any())
    wf2, _ = _run("fedavg", cohorts, ["sampling.calibrate_repeats=false"])
    assert "repeat_prob" not in wf2.sampling and "repeat_target" not in wf2.sampling


def test_repeat_min_share_copies_only_features_charted_mostly_unchanged(cohorts):
    """sampling.repeat_min_share: a feature whose federated repeat share is below it gets h = 0; the others get
    the h they get without the threshold (same sample, same seed). The run's default is 0.5."""
    from fedehr.algorithms.generate import calibrate_repeats

    wf, errors = _run("fedavg", cohorts, ["sampling.calibrate_repeats=true"])
    assert not errors and wf.cfg.sampling.repeat_min_share == 0.5
    target = np.array([0.9, 0.3, 0.6, 0.8, 0.9])  # features 0-3 numeric, 4 (MechVent) binary
    gen = wf.generator()
    h_all = calibrate_repeats(gen, target, seed=3, min_share=0.0)
    assert (h_all[:4] > 0).all() and h_all[4] == 0.0, h_all
    h_cut = calibrate_repeats(gen, target, seed=3, min_share=0.7)
    np.testing.assert_array_equal(h_cut, np.where(target >= 0.7, h_all, 0.0))
    assert (h_cut > 0).tolist() == [True, False, False, True, False]
    assert not calibrate_repeats(gen, target, seed=3, min_share=0.95).any()

def _recorded(c):
    """The tiny cohort as a monitor would record it: HR and MAP in whole units, Temp to 0.1, Age in years."""
    from fedehr.data.cohort import Cohort

    values, static = c.values.copy(), c.static.copy()
    values[..., [0, 1]] = np.rint(values[..., [0, 1]])
    values[..., 2] = np.rint(values[..., 2] * 10) / 10
    two = c.counts == 2
    two[..., 3:] = False
    values[two] += 0.5                                          # bins with two measurements hold a mean
    static[:, 0] = np.rint(static[:, 0])
    return Cohort(c.schema, c.stay_ids, c.sites, static, values, c.counts, c.labels)


@pytest.mark.parametrize("method", ["fedavg", "cdmt-ehr"])
def test_resolution_is_learned_from_site_counts_and_applied(method, cohorts):
    """sampling.round_to_resolution (on by default): sites send on-grid counts of their single measurements; the
    run stores each numeric feature's step (none for a continuous one or a binary one), records it, and samples
    values on the step's k-th parts and static values on their step; off, nothing is sent or rounded."""
    recorded = tuple(_recorded(c) for c in cohorts)
    extra = ["diffusion.stage.rounds=1", "diffusion.cdmt.hidden=8"] if method == "cdmt-ehr" else []
    wf, errors = _run(method, recorded, extra)
    assert not errors
    assert wf.sampling["temporal_quantum"] == [1.0, 1.0, 0.1, 0.0, 0.0]   # Lactate continuous, MechVent binary
    assert wf.sampling["static_quantum"] == [1.0, 0.0]
    entry = next(e for e in wf.metrics()["rounds"] if "resolution" in e)
    assert entry["resolution"] == {"HR": 1.0, "MAP": 1.0, "Temp": 0.1, "Age": 1.0}
    syn = wf.generator().sample(200, seed=1)
    for f, q in ((0, 1.0), (2, 0.1)):
        obs = syn.counts[..., f] > 0
        units = syn.values[..., f][obs].astype(np.float64) * syn.counts[..., f][obs] / q
        assert np.allclose(units, np.rint(units), atol=1e-3), f
    lactate = syn.values[..., 3][np.isfinite(syn.values[..., 3])]
    assert not np.allclose(lactate * 10, np.rint(lactate * 10), atol=1e-3)
    age = syn.static[:, 0][np.isfinite(syn.static[:, 0])]
    np.testing.assert_array_equal(age, np.rint(age))
    wf2, _ = _run(method, recorded, [*extra, "sampling.round_to_resolution=false"])
    assert "temporal_quantum" not in wf2.sampling
    hr = wf2.generator().sample(200, seed=1).values[..., 0]
    assert not np.allclose(hr[np.isfinite(hr)], np.rint(hr[np.isfinite(hr)]))


def test_within_calibration_runs_from_site_sums(cohorts):
    """sampling.calibrate_within: sites send within-stay sums (no per-stay values); the run stores the pooled
    within-stay variance and one scale per temporal feature (1 for non-numeric ones), and a fresh sample has the
    target's within-stay variance where the scale is inside (0, 2); off (the default), neither is sent nor
    fitted."""
    from fedehr.data.fedstats import within_stay_sums

    wf, errors = _run("fedavg", cohorts, ["sampling.calibrate_within=true"])
    assert not errors
    ws = within_stay_sums(cohorts[0].values)
    want = ws[0] / ws[1]
    np.testing.assert_allclose(np.array(wf.sampling["within_target"], dtype=np.float64), want, rtol=1e-9)
    lam = np.asarray(wf.sampling["within_scale"])
    num = np.array([s.kind == "numeric" for s in cohorts[0].schema.temporal])
    assert (lam[~num] == 1.0).all() and ((lam >= 0) & (lam <= 2)).all()
    last = [e for e in wf.metrics()["rounds"] if e["action"] == "prior-stats"][-1]
    assert sorted(last["within_scale"]) == sorted(cohorts[0].schema.temporal_names)
    got = within_stay_sums(wf.generator().sample(3000, seed=3).values)
    inside = num & (lam > 0.05) & (lam < 1.95)
    assert inside.any()
    np.testing.assert_allclose((got[0] / got[1])[inside], want[inside], rtol=0.15)
    wf2, _ = _run("fedavg", cohorts, [])  # off by default
    assert "within_scale" not in wf2.sampling and "within_target" not in wf2.sampling


def test_within_stay_sums_by_hand():
    from fedehr.data.fedstats import within_stay_sums, within_stay_variance

    v = np.full((2, 3, 2), np.nan)
    v[0, :, 0] = [1.0, 3.0, np.nan]      # mean 2: deviations ±1
    v[1, :, 0] = [5.0, 5.0, 8.0]         # mean 6: 1, 1, 4
    v[1, 1, 1] = 7.0                     # one value: no deviation
    np.testing.assert_allclose(within_stay_sums(v), [[2.0 + 6.0, 0.0], [5.0, 1.0]])
    np.testing.assert_allclose(within_stay_variance(within_stay_sums(v)), [8.0 / 5.0, 0.0])
    assert np.isnan(within_stay_variance(within_stay_sums(np.full((2, 3, 1), np.nan)))).all()  # never observed


def test_site_helpers_by_hand():
    counts = np.zeros((2, 3, 2), dtype=np.uint16)
    counts[0, :, 0] = [1, 2, 0]
    counts[1, :, 0] = [5, 1, 1]
    counts[1, 0, 1] = 2
    np.testing.assert_array_equal(count_histogram(counts, 3), [[3, 1, 1], [0, 1, 0]])  # 5 is clipped to 3
    labels = np.array([[1, 0], [1, 1], [0, 0], [np.nan, 1], [1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(label_patterns(labels), [1, 2, 0, 1])  # bit j = label j; NaN rows skipped
    cfg = load_config(None, ["tcvae.beta=2", "tcvae.beta_warmup=0.5"])
    assert [beta_schedule(cfg, e, 4) for e in range(4)] == [1.0, 2.0, 2.0, 2.0]
    ctx = SiteContext("a", None, seed=1)  # type: ignore[arg-type]
    t0, t1 = Task("x", {"round": 0}), Task("x", {"round": 1})
    assert seed_for(ctx, t0) != seed_for(ctx, t1) != seed_for(SiteContext("b", None, seed=1), t1)  # type: ignore[arg-type]
    with pytest.raises(FedEHRError, match="unknown task action"):
        handle(Task("dance"), ctx)


def test_evaluate_round_returns_only_site_metrics(cohorts):
    """The last task ships a synthetic sample; each site scores it on its own test split, metrics only."""
    wf, errors = _run("centralized", cohorts, ["eval_sample=60"])
    assert not errors
    ev = wf.metrics()["evaluation"]["pooled"]
    assert ev["n_synthetic"] == 60 and ev["n_test"] == 60
    for key in ("discriminative_gbm", "membership_auc", "dcr_ratio", "tstr_auroc_gbm"):
        assert isinstance(ev[key], float) and np.isfinite(ev[key]), key
    assert 0.0 <= ev["discriminative_gbm"] <= 1.0
    last = wf.metrics()["rounds"][-1]
    assert last["action"] == "evaluate"


@pytest.mark.parametrize("method", ["fedehr-gen", "fedavg", "centralized"])
def test_training_tasks_carry_their_place_in_the_stage(method, cohorts):
    """stage.lr_schedule and the β warm-up run over a whole stage: every ae-train / tcvae-train task says which
    epochs of the stage it covers, and a cosine schedule changes what the sites train."""
    seen: list[tuple[str, int, int, int]] = []

    def recording(task, ctx):
        if task.action in ("ae-train", "tcvae-train"):
            c = task.config
            seen.append((task.action, int(c["epochs"]), int(c["epoch_offset"]), int(c["total_epochs"])))
        return handle(task, ctx)

    extra = ["stage1.local_epochs=2", "matching.retrain_epochs=0"]
    wf, errors = _run(method, cohorts, extra, handler=recording)
    assert not errors
    for action, rounds in (("ae-train", 2), ("tcvae-train", 2)):
        got = sorted({s for s in seen if s[0] == action})
        e = got[0][1]
        assert got == [(action, e, r * e, rounds * e) for r in range(rounds)]
    cosine, _ = _run(method, cohorts, [*extra, "stage1.lr_schedule=cosine"])
    assert not np.allclose(cosine.ae["enc.0.weight"], wf.ae["enc.0.weight"])
