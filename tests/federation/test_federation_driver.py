"""The server round loop on an in-process Grid that runs the real ClientApp per node (no Ray, fast).

Covers node -> site mapping by handshake, per-site payload routing, error replies and timeouts as missing
sites, byte accounting, checkpoints, FAILED markers and resume without redoing completed rounds.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from toy_workflow import ToyWorkflow, pooled_moments, toy_handle, write_cohort, write_site_cohorts

from fedehr.data.store import load_cohort
from fedehr.errors import FedEHRError, InputError
from fedehr.federation import checkpoint
from fedehr.federation.client_app import make_client_app, resolve_site
from fedehr.federation.driver import Driver, DriveSettings, Interrupted


class FakeGrid:
    """Grid whose nodes run the fedehr ClientApp in this process; ``silent`` nodes never answer."""

    def __init__(self, node_configs: dict[int, dict], handler=toy_handle, silent: frozenset[int] = frozenset()):
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1  # as a SuperLink would set
        self.app = make_client_app(handler=handler)
        self.contexts = {n: Context(run_id=7, node_id=n, node_config=cfg, state=RecordDict(), run_config={})
                         for n, cfg in node_configs.items()}
        self.silent, self.inbox, self.sent_types = silent, {}, []

    def get_node_ids(self):
        return list(self.contexts)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            self.sent_types.append(msg.metadata.message_type)
            node = msg.metadata.dst_node_id
            if node in self.silent:
                continue
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as e:  # what Flower does with a raising ClientApp
                reply = Message(Error(code=2, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            self.inbox[mid] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self.inbox.pop(m) for m in list(message_ids) if m in self.inbox]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("cohorts")
    full = write_cohort(root / "full", n=90, n_sites=3)
    return full, write_site_cohorts(root / "sites", full)


def deployment_nodes(site_dirs: dict[str, Path]) -> dict[int, dict]:
    """Node ids in a different order from the site names, each node configured like `fedehr site` does."""
    return {900 + 10 * i: {"cohort": str(d), "device": "cpu"} for i, d in enumerate(reversed(site_dirs.values()))}


def settings(run_dir: Path, **kw) -> DriveSettings:
    base = {"run_dir": run_dir, "kind": "deployment", "round_timeout_s": 2.0, "min_sites": 2, "expect_nodes": 3,
            "wait_s": 5.0, "poll_s": 0.01, "config": {"method": "toy"}}
    return DriveSettings(**{**base, **kw})


def test_full_run_maps_nodes_to_sites_and_pools_exactly(cohorts, tmp_path):
    full, site_dirs = cohorts
    grid = FakeGrid(deployment_nodes(site_dirs))
    metrics = Driver(grid, ToyWorkflow(3), settings(tmp_path / "run")).run()
    rt = metrics["runtime"]
    assert rt["node_sites"] == {"900": "site2", "910": "site1", "920": "site0"}
    assert rt["n_rounds"] == 4 and rt["sites"] == ["site0", "site1", "site2"] and rt["missing"] == {}
    assert all(r["replied"] == ["site0", "site1", "site2"] for r in rt["rounds"])
    assert set(grid.sent_types) == {"train.fedehr"}
    # the per-site token check inside ToyWorkflow.receive proves each site got its own per_site payload
    train = load_cohort(full, split="train")
    mean, var = pooled_moments(train.values, train.mask)
    np.testing.assert_allclose(metrics["workflow"]["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(metrics["workflow"]["var"], var, rtol=1e-8)
    # bytes: every round sent something to every site; a moments reply carries 4 arrays of F float64
    last = rt["rounds"][-1]
    assert set(last["bytes_sent"]) == set(last["bytes_received"]) == {"site0", "site1", "site2"}
    assert all(v > 4 * 5 * 8 for v in last["bytes_received"].values())
    assert rt["bytes_sent"] == sum(sum(r["bytes_sent"].values()) for r in rt["rounds"])
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (run / "toy_mean.npy").is_file() and not (run / "state").exists() and not (run / "FAILED").exists()


def test_error_replies_and_timeouts_make_sites_missing_without_ending_the_run(cohorts, tmp_path):
    _, site_dirs = cohorts
    nodes = deployment_nodes(site_dirs)
    grid = FakeGrid(nodes)
    wf = ToyWorkflow(3, fail_site="site1", fail_round=2)
    rt = Driver(grid, wf, settings(tmp_path / "run")).run()["runtime"]
    assert rt["missing"] == {"site1": [2]}
    assert "injected failure at site1" in rt["rounds"][2]["errors"]["site1"]
    assert rt["rounds"][3]["replied"] == ["site0", "site1", "site2"]  # it came back
    assert wf.history[2]["missing"] == ["site1"]

    grid = FakeGrid(nodes, silent=frozenset({920}))  # node 920 serves site0 and never answers
    with pytest.raises(FedEHRError, match="answered the handshake"):
        Driver(grid, ToyWorkflow(1), settings(tmp_path / "run2", min_sites=3, round_timeout_s=0.5)).run()
    assert (tmp_path / "run2" / "FAILED").is_file()
    rt = Driver(grid, ToyWorkflow(1), settings(tmp_path / "run3", round_timeout_s=0.5)).run()["runtime"]
    assert rt["sites"] == ["site1", "site2"]
    assert [f["node_id"] for f in rt["handshake_failures"]][:1] == ["920"]
    assert "no handshake reply" in rt["handshake_failures"][0]["error"]


def test_a_second_node_claiming_a_site_is_refused(cohorts, tmp_path):
    _, site_dirs = cohorts
    nodes = deployment_nodes(site_dirs)
    nodes[999] = {"cohort": str(site_dirs["site1"])}
    rt = Driver(FakeGrid(nodes), ToyWorkflow(1), settings(tmp_path / "run")).run()["runtime"]
    assert sorted(rt["node_sites"].values()) == ["site0", "site1", "site2"]
    assert any("already served" in f["error"] for f in rt["handshake_failures"])


def test_stop_checkpoints_and_resume_does_not_redo_rounds(cohorts, tmp_path):
    full, site_dirs = cohorts
    nodes, run = deployment_nodes(site_dirs), tmp_path / "run"
    stop = threading.Event()

    def stop_after_round_1(event, info):
        if event == "round" and info["round"] == 1:
            stop.set()

    with pytest.raises(Interrupted, match="2 completed round"):
        Driver(FakeGrid(nodes), ToyWorkflow(4), settings(run), progress=stop_after_round_1, stop=stop).run()
    assert "Interrupted" in (run / "FAILED").read_text()
    assert checkpoint.load(run)[0] == 1
    with pytest.raises(InputError, match="--resume"):
        Driver(FakeGrid(nodes), ToyWorkflow(4), settings(run)).run()
    seen = []
    metrics = Driver(FakeGrid(nodes), ToyWorkflow(4), settings(run, resume=True),
                     progress=lambda e, i: seen.append(i["round"]) if e == "round" else None).run()
    assert seen == [2, 3, 4]  # rounds 0 and 1 were not run again
    rt = metrics["runtime"]
    assert [r["round"] for r in rt["rounds"]] == [0, 1, 2, 3, 4]
    assert [r["session"] for r in rt["rounds"]] == [0, 0, 1, 1, 1]
    assert rt["sessions"][1]["resumed_after_round"] == 1
    assert not (run / "FAILED").exists()
    train = load_cohort(full, split="train")
    np.testing.assert_allclose(metrics["workflow"]["mean"], pooled_moments(train.values, train.mask)[0])
    with pytest.raises(InputError, match="already complete"):
        Driver(FakeGrid(nodes), ToyWorkflow(4), settings(run, resume=True)).run()


def test_checkpoint_round_trip_of_nested_state(tmp_path):
    import torch

    state = {"meta": {"step": 3, "names": ["a", "b"], "nested": {"x": None, "f": 0.5}},
             "w": np.arange(6, dtype=np.float32).reshape(2, 3), "flags": np.array([True, False]),
             "zero": np.array(1.5), "sites": np.array(["h1", "h2"]), "t": torch.ones(2, dtype=torch.float64),
             "list": [np.int64(3), np.zeros(2, dtype=np.int16)]}
    checkpoint.save(tmp_path, 3, state, {"kind": "x"})
    checkpoint.save(tmp_path, 4, state, {"kind": "y"})
    last, back, runtime = checkpoint.load(tmp_path)
    assert last == 4 and runtime == {"kind": "y"}
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["ckpt-00004", "latest.json"]
    assert back["meta"] == state["meta"] and back["list"][0] == 3
    for k in ("w", "flags", "zero", "sites"):
        assert back[k].dtype == state[k].dtype and back[k].shape == state[k].shape
        np.testing.assert_array_equal(back[k], state[k])
    assert isinstance(back["t"], torch.Tensor) and torch.equal(back["t"], state["t"])
    with pytest.raises(TypeError, match="object"):
        checkpoint.save(tmp_path, 5, {"bad": object()}, {})


def test_site_resolution_deployment_and_simulation(cohorts):
    full, site_dirs = cohorts
    assert resolve_site({"cohort": str(site_dirs["site2"])}, {}, {}) == (site_dirs["site2"], "site2", False)
    assert resolve_site({"cohort": str(full), "site": "site1"}, {}, {})[1:] == ("site1", False)
    with pytest.raises(InputError, match="several sites"):
        resolve_site({"cohort": str(full)}, {}, {})
    with pytest.raises(InputError, match="site not in"):
        resolve_site({"cohort": str(full), "site": "nope"}, {}, {})
    sim = {"partition-id": 2, "num-partitions": 3}
    assert resolve_site(sim, {"cohort": str(full)}, {})[1:] == ("site2", True)
    assert resolve_site({**sim, "partition-id": 0}, {}, {"cohort": str(full)})[1] == "site0"
    with pytest.raises(InputError, match="3 train sites"):
        resolve_site({"partition-id": 0, "num-partitions": 4}, {"cohort": str(full)}, {})
    # outside simulation the server cannot point a site at a path through the run config
    with pytest.raises(InputError, match="does not say where its data is"):
        resolve_site({}, {"cohort": str(full)}, {})


def test_site_state_survives_a_fresh_process_cache(cohorts, tmp_path):
    """SiteContext.state goes through Flower's context.state, so a new ClientApp process keeps counting."""
    from fedehr.federation import client_app

    _, site_dirs = cohorts
    grid = FakeGrid(deployment_nodes(site_dirs))
    wf = ToyWorkflow(3)
    driver = Driver(grid, wf, settings(tmp_path / "run"))

    def wipe_cache(event, info):
        client_app._CONTEXTS.clear()  # as if each task ran in a new flwr-clientapp process

    driver.progress = wipe_cache
    driver.run()
    assert wf.tasks_seen == {"site0": 4, "site1": 4, "site2": 4}


def test_a_broken_site_is_recorded_and_a_late_site_joins_without_blocking(cohorts, tmp_path):
    _, site_dirs = cohorts
    nodes = deployment_nodes({s: site_dirs[s] for s in ("site0", "site1")})
    nodes[555] = {"cohort": str(tmp_path / "no-such-cohort")}
    grid = FakeGrid(nodes)

    def late_join(event, info):
        if event == "round" and info["round"] == 1:
            grid.contexts[777] = Context(run_id=7, node_id=777, node_config={"cohort": str(site_dirs["site2"])},
                                         state=RecordDict(), run_config={})

    rt = Driver(grid, ToyWorkflow(3), settings(tmp_path / "run", expect_nodes=3), progress=late_join).run()["runtime"]
    broken = [f for f in rt["handshake_failures"] if f["node_id"] == "555"]
    assert broken and "not a fedehr cohort directory" in broken[0]["error"]
    assert rt["node_sites"]["777"] == "site2"
    assert [r["replied"] for r in rt["rounds"]][1:] == [["site0", "site1"], ["site0", "site1"],
                                                        ["site0", "site1", "site2"]]
