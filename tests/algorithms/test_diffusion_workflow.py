"""Diffusion workflows (ehrdiff, cdmt-ehr, latent-cdmt × fedavg / fedprox / centralized) through the in-process
driver: completion, FedAvg arithmetic, the FedProx pull, EMA bookkeeping, resume, the run bundle, sampling
conditions and the code-matrix helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_cohort
from fedehr.algorithms import diffusion as D
from fedehr.algorithms import diffusion_site as S
from fedehr.algorithms import inprocess
from fedehr.algorithms.protocol import Reply, SiteContext, Task
from fedehr.algorithms.site import handle
from fedehr.config import ExperimentConfig
from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema
from fedehr.errors import FedEHRError, InputError
from fedehr.models.diffusion import codes, ehrdiff


def _cfg(method: str, training: str = "fedavg", **diffusion: object) -> ExperimentConfig:
    stage = {"rounds": 2, "local_epochs": 1, "batch_size": 16, **diffusion.pop("stage", {})}  # type: ignore[dict-item]
    return ExperimentConfig.from_dict({
        "method": method, "device": "cpu", "eval_sample": 0, "seed": 3,
        "ae": {"hidden": [16], "latent": 4}, "stage1": {"rounds": 1, "local_epochs": 1, "batch_size": 16},
        "diffusion": {"training": training, "stage": stage,
                      "ehrdiff": {"unit_dims": [32, 32], "time_dim": 16, "steps": 4},
                      "cdmt": {"hidden": 8, "cond_dim": 8, "noise_dim": 8, "steps": 4}, **diffusion}})


def _sites(cfg: ExperimentConfig, train: Cohort) -> dict[str, SiteContext]:
    if cfg.diffusion.training == "centralized":
        return {"pooled": SiteContext("pooled", train, None, "cpu", seed=0)}
    return {s: SiteContext(s, c, None, "cpu", seed=i) for i, (s, c) in enumerate(train.by_site().items())}


def _run(cfg: ExperimentConfig, train: Cohort, **kw: object) -> tuple[D.DiffusionWorkflow, list]:
    wf = D.make_workflow(cfg)
    seen: list[tuple[Task, list[Reply]]] = []
    errors: dict[str, list[str]] = {}
    inprocess.run(wf, _sites(cfg, train), lambda t, r, m: seen.append((t, r)), handler=handle, errors=errors)
    assert not errors, errors
    return wf, seen


@pytest.fixture
def train(tiny_schema: Schema) -> Cohort:
    return make_tiny_cohort(tiny_schema, n=48, seed=0)


@pytest.mark.parametrize("method", D.DIFFUSION_METHODS)
@pytest.mark.parametrize("training", ["fedavg", "fedprox", "centralized"])
def test_workflow_runs_and_samples(method: str, training: str, train: Cohort) -> None:
    """Every method × training mode completes, and its generator yields a valid cohort."""
    wf, seen = _run(_cfg(method, training), train)
    assert wf.done and [t.action for t, _ in seen][-1] == "dm-train"
    expected_sites = ["pooled"] if training == "centralized" else ["site0", "site1"]
    assert wf.sites == expected_sites
    syn = wf.generator().sample(30, seed=1)
    assert syn.values.shape == (30, 6, 5) and syn.static.shape == (30, 2)
    assert bool(((syn.counts > 0) == np.isfinite(syn.values)).all())
    assert set(np.unique(syn.labels[:, 0])) <= {0.0, 1.0}
    lo = np.array([s.valid_min for s in train.schema.temporal])
    hi = np.array([s.valid_max for s in train.schema.temporal])
    assert bool(((syn.values >= lo) | np.isnan(syn.values)).all() and ((syn.values <= hi) | np.isnan(syn.values)).all())
    losses = [e["loss"] for e in wf.history if e["action"] == "dm-train"]
    assert len(losses) == 2 and all(np.isfinite(v) for e in losses for v in e.values())


def test_fedavg_is_the_n_weighted_average_of_site_replies(train: Cohort) -> None:
    wf, seen = _run(_cfg("cdmt-ehr"), train)
    _, replies = seen[-1]
    n = np.array([r.num_examples for r in replies], dtype=np.float64)
    for prefix, key in (("net/", "net"), ("ema/", "ema")):
        name = next(k for k in replies[0].arrays if k.startswith(prefix) and "in_proj.weight" in k)
        expect = sum(w * r.arrays[name].astype(np.float64) for w, r in zip(n / n.sum(), replies, strict=True))
        np.testing.assert_allclose(wf.state[key][name[len(prefix):]], expect, rtol=1e-6, atol=1e-7)
    assert wf.ema_step == max(int(r.metrics["steps"]) for r in replies) * 2  # two rounds


def test_fedprox_pulls_local_weights_to_the_global_model(train: Cohort) -> None:
    """A large μ keeps the locally trained weights closer to the weights the round started from."""
    def drift(mu: float) -> float:
        cfg = _cfg("ehrdiff", "fedprox", prox_mu=mu, stage={"rounds": 1, "local_epochs": 3})
        _, seen = _run(cfg, train)
        task, replies = seen[-1]
        start = {k: v for k, v in task.arrays.items() if k.startswith("net/")}
        return sum(float(((r.arrays[k] - v) ** 2).sum()) for r in replies for k, v in start.items())

    assert drift(1000.0) < 0.5 * drift(0.0)


def test_local_objective_ema_and_prox() -> None:
    """EMA with decay 0 equals the final weights; the prox part equals μ/2·||θ − θ_0||²."""
    from fedehr.training.loop import TrainConfig, shuffled_batches, train_local

    g = torch.Generator().manual_seed(0)
    cfg = ehrdiff.EHRDiffConfig.tiny("series")
    model = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(4), generator=g)
    ema = ehrdiff.build(cfg, ehrdiff.EHRDiffDims(4))
    ema.load_state_dict(model.state_dict())
    anchor = [p.detach().clone() for p in model.parameters()]
    obj = S.LocalObjective(ehrdiff.objective, ema, 0.0, 0, 0.5, anchor)
    data = {"x": torch.rand(32, 4, generator=g)}
    stats = train_local(model, obj, shuffled_batches(data, 8, generator=g), TrainConfig(epochs=2, lr=1e-2),
                        generator=g)
    obj.finish(model)
    assert obj.calls == stats.steps == 8
    for a, b in zip(ema.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    loss, parts = obj(model, {"x": data["x"][:4]}, torch.Generator().manual_seed(1))
    prox = 0.25 * sum(float(((p.detach() - a) ** 2).sum()) for p, a in zip(model.parameters(), anchor, strict=True))
    assert parts["prox"].shape == (4,) and parts["prox"][0].item() == pytest.approx(prox, rel=1e-5)
    torch.testing.assert_close(loss, parts["diffusion"] + parts["prox"])


def test_resume_equals_an_uninterrupted_run(train: Cohort) -> None:
    cfg = _cfg("cdmt-ehr", "centralized", stage={"rounds": 3})
    full, _ = _run(cfg, train)
    part = D.make_workflow(cfg)
    sites = _sites(cfg, train)
    for _ in range(3):  # hello, dm-stats, first dm-train
        task = part.next_task()
        part.receive(task, [handle(task.for_site(s), ctx) for s, ctx in sites.items()], [])
    resumed = D.make_workflow(cfg)
    resumed.load_state_dict(part.state_dict())
    inprocess.run(resumed, _sites(cfg, train), handler=handle)
    for key in ("net", "ema"):
        for name, v in full.state[key].items():
            np.testing.assert_allclose(resumed.state[key][name], v, rtol=1e-5, atol=1e-6)
    other = D.make_workflow(_cfg("cdmt-ehr", "centralized", stage={"rounds": 4}))
    with pytest.raises(FedEHRError, match="different configuration"):
        other.load_state_dict(part.state_dict())


def test_saved_run_reproduces_samples(train: Cohort, tmp_path: Path) -> None:
    wf, _ = _run(_cfg("latent-cdmt"), train)
    wf.save(tmp_path / "run")
    assert (tmp_path / "run" / "model" / "ema.safetensors").is_file()
    loaded = D.load_generator(tmp_path / "run")
    a, b = wf.generator().sample(25, seed=7), loaded.sample(25, seed=7)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.static, b.static)
    with pytest.raises(InputError):
        D.load_generator(tmp_path)


def test_sampling_conditions(train: Cohort) -> None:
    gen = _run(_cfg("ehrdiff", "centralized"), train)[0].generator()
    assert (gen.sample(20, seed=0, condition={"mortality": 1}).labels[:, 0] == 1).all()
    assert (gen.sample(20, seed=0, prevalence=0.0).labels[:, 0] == 0).all()
    for bad in ({"Age": 50.0}, {"mortality": 3}):
        with pytest.raises(InputError):
            gen.sample(5, condition=bad)
    with pytest.raises(InputError):
        gen.sample(5, prevalence=1.5)


def test_unconditional_model(train: Cohort) -> None:
    gen = _run(_cfg("cdmt-ehr", "centralized", label=""), train)[0].generator()
    syn = gen.sample(10, seed=0)
    assert np.isnan(syn.labels).all()
    with pytest.raises(InputError):
        gen.sample(5, prevalence=0.5)


def test_configuration_errors(train: Cohort, tiny_schema: Schema) -> None:
    with pytest.raises(InputError, match="series"):
        _cfg("ehrdiff", ehrdiff={"mode": "codes"})
    with pytest.raises(InputError):
        ExperimentConfig.from_dict({"method": "cdmt-ehr", "diffusion": {"training": "local"}})
    with pytest.raises(InputError):
        ExperimentConfig.from_dict({"method": "cdmt-ehr", "diffusion": {"bogus": 1}})
    with pytest.raises(InputError):
        D.DiffusionWorkflow(ExperimentConfig(method="fedavg"))  # not a diffusion method
    with pytest.raises(InputError, match="conditioning label"):
        _run(_cfg("cdmt-ehr", label="sepsis"), train)


def test_local_training_uses_one_site(train: Cohort) -> None:
    cfg = ExperimentConfig.from_dict({**_cfg("cdmt-ehr").to_dict(), "local_site": "site1",
                                           "diffusion": {**_cfg("cdmt-ehr").diffusion.to_dict(),
                                                         "training": "local"}})
    wf = D.make_workflow(cfg)
    inprocess.run(wf, {"site1": SiteContext("site1", train.site("site1"), None, "cpu")}, handler=handle)
    assert wf.sites == ["site1"] and wf.done


def test_fit_codes_learns_code_prevalences() -> None:
    """Code-matrix mode: a small EHRDiff trained on a toy matrix reproduces its prevalences."""
    rng = np.random.default_rng(0)
    p = np.array([0.6, 0.3, 0.1, 0.05, 0.5, 0.2])
    x = (rng.random((600, 6)) < p).astype(np.float32)
    x[:, 5] = x[:, 0] * (rng.random(600) < 0.4)  # a correlated code
    cfg = ehrdiff.EHRDiffConfig.tiny("codes", unit_dims=(64, 64), time_dim=32, sinusoidal_dim=16, steps=16,
                                     ema_decay=0.9)
    _, ema, stats = D.fit_codes(x, cfg, epochs=60, batch_size=128, lr=3e-3)
    assert stats.epoch_loss[-1] < stats.epoch_loss[0]
    s = ehrdiff.sample(ema, 2000, generator=torch.Generator().manual_seed(0)).numpy()
    assert set(np.unique(s)) <= {0.0, 1.0}
    assert codes.prevalence_pearson(x, s) > 0.9
    assert codes.nonzero_columns(s) == 6
    assert codes.cmd_pearson(x, s) < 0.15
    with pytest.raises(InputError):
        D.fit_codes(x, ehrdiff.EHRDiffConfig.tiny("series"), epochs=1)


@pytest.mark.parametrize("method", ["cdmt-ehr", "latent-cdmt"])
def test_training_tasks_carry_their_place_in_the_stage(method: str, train: Cohort) -> None:
    """diffusion.stage.lr_schedule runs over all rounds: dm-train (and latent-cdmt's ae-train) tasks say which
    epochs of their stage they cover, and a cosine schedule changes the trained weights."""
    cfg = _cfg(method, stage={"local_epochs": 2})
    wf, seen = _run(cfg, train)
    dm = [(t.config["epochs"], t.config["epoch_offset"], t.config["total_epochs"]) for t, _ in seen
          if t.action == "dm-train"]
    assert dm == [(2, 0, 4), (2, 2, 4)]
    if method == "latent-cdmt":
        ae = [(t.config["epoch_offset"], t.config["total_epochs"]) for t, _ in seen if t.action == "ae-train"]
        assert ae == [(0, 1)]
    cosine, _ = _run(_cfg(method, stage={"local_epochs": 2, "lr_schedule": "cosine"}), train)
    key = next(iter(wf.state["net"]))
    assert not np.allclose(cosine.state["net"][key], wf.state["net"][key])
