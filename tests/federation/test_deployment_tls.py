"""Flower's deployment runtime on 127.0.0.1: a SuperLink with TLS and SuperNode authentication, three
hospitals running `fedehr site` on their own cohort directories, and the researcher's
`fedehr train --superlink` (``flwr run``) training the real fedehr-gen method (tiny settings).

Each party gets its own FLWR_HOME, as on separate machines. A fourth SuperNode with an unregistered key must
be kept out. Every process is stopped by PID (with its whole tree) in ``finally`` and none may survive.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from toy_workflow import write_cohort, write_site_cohorts

from fedehr.federation.deployment import (
    executable,
    flower_env,
    make_node_key,
    make_tls_material,
    superlink_command,
    write_flower_config,
)
from fedehr.federation.processes import ProcessSet

pytestmark = pytest.mark.slow
FEDEHR = str(Path(sys.executable).with_name("fedehr"))
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"  # the repository's debug preset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def online_nodes(env: dict[str, str]) -> int:
    out = subprocess.run([executable("flwr"), "supernode", "list", "fed", "--format", "json"], env=env,
                         capture_output=True, text=True, timeout=60)
    try:
        nodes = json.loads(out.stdout).get("nodes", [])
    except json.JSONDecodeError:
        return 0
    return sum(str(n.get("status", "")).lower() == "online" for n in nodes)


def test_tls_supernode_auth_three_sites_train_fedehr_gen(tmp_path):
    site_dirs = write_site_cohorts(tmp_path / "hospitals", write_cohort(tmp_path / "cohort", n=90, n_sites=3))
    tls = make_tls_material(tmp_path / "tls", hosts=("127.0.0.1", "localhost"))
    port = free_port()
    cli_env = flower_env(tmp_path / "home-researcher")
    write_flower_config(tmp_path / "home-researcher", "fed", f"127.0.0.1:{port}", root_certificates=tls.ca)
    procs, logs = ProcessSet(), tmp_path / "logs"
    logs.mkdir()
    try:
        procs.start("superlink", superlink_command(host="127.0.0.1", port=port, tls=tls, supernode_auth=True),
                    log=logs / "superlink.log", env=flower_env(tmp_path / "home-superlink"))
        wait_for(lambda: port_open(port), "the SuperLink port")
        for site, cohort in site_dirs.items():
            key, pub = make_node_key(tmp_path / "keys", site)
            reg = subprocess.run([executable("flwr"), "supernode", "register", str(pub), "fed"], env=cli_env,
                                 capture_output=True, text=True, timeout=120)
            assert reg.returncode == 0, reg.stdout + reg.stderr
            procs.start(site, [FEDEHR, "site", "--cohort", str(cohort), "--superlink", f"127.0.0.1:{port}",
                               "--root-certificates", str(tls.ca), "--auth-key", str(key),
                               "--runtime-port", str(free_port())],
                        log=logs / f"{site}.log", env=flower_env(tmp_path / f"home-{site}"))
        rogue_key, _ = make_node_key(tmp_path / "keys", "rogue")  # never registered
        procs.start("rogue", [FEDEHR, "site", "--cohort", str(site_dirs["site0"]), "--superlink",
                              f"127.0.0.1:{port}", "--root-certificates", str(tls.ca), "--auth-key", str(rogue_key),
                              "--runtime-port", str(free_port())],
                    log=logs / "rogue.log", env=flower_env(tmp_path / "home-rogue"))
        wait_for(lambda: online_nodes(cli_env) == 3, "three authenticated SuperNodes online", timeout_s=120)
        procs.snapshot()

        run = tmp_path / "run"
        # tiny preset; matching without local retraining keeps the number of deployment rounds small
        train = subprocess.run([FEDEHR, "train", "--superlink", "fed", "--config", str(TINY), "--set", "min_sites=3",
                                "--set", "eval_sample=40", "--set", "matching.retrain_epochs=0", "--out", str(run)],
                               env={**cli_env, "COLUMNS": "120"}, capture_output=True, text=True, timeout=600)
        procs.snapshot()
        assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-4000:]

        metrics = json.loads((run / "metrics.json").read_text())
        rt = metrics["runtime"]
        assert rt["kind"] == "deployment" and rt["sites"] == ["site0", "site1", "site2"]
        assert sorted(rt["node_sites"].values()) == ["site0", "site1", "site2"]  # the rogue node is not there
        assert rt["missing"] == {} and rt["bytes_sent"] > 0 and rt["bytes_received"] > 0
        assert metrics["workflow"]["step"] == metrics["workflow"]["total_steps"]
        assert set(metrics["workflow"]["evaluation"]) == {"site0", "site1", "site2"}
        assert (run / "config.toml").is_file() and any((run / "model").iterdir())
        assert not (run / "state").exists()
        assert online_nodes(cli_env) == 3
        assert "Failed to activate SuperNode" in (logs / "rogue.log").read_text()  # unregistered key refused
        print("rounds (label, wall s):", [(r["label"], round(r["wall_s"], 1)) for r in rt["rounds"]],
              "handshake s:", round(rt["sessions"][0]["handshake_s"], 1))

        # `fedehr site` forwards SIGTERM to its SuperNode and leaves nothing behind
        site_proc = procs.procs["site2"]
        tree = [psutil.Process(site_proc.pid), *psutil.Process(site_proc.pid).children(recursive=True)]
        assert any("flower-supernode" in " ".join(p.cmdline()) for p in tree)
        os.kill(site_proc.pid, signal.SIGTERM)
        site_proc.wait(timeout=60)
        _, still = psutil.wait_procs(tree, timeout=30)
        assert [p.pid for p in still if p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        stopped = procs.stop_all()
        for name, log in procs.logs.items():
            print(f"---- {name} ----\n" + log.read_text(errors="replace")[-3000:])
    assert stopped and procs.survivors() == []
    assert not port_open(port)
