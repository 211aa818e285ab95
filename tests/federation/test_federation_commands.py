"""Command lines, app projects, Flower config, TLS / key material and CLI input checks (no processes)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from toy_workflow import write_cohort

from fedehr.errors import InputError
from fedehr.federation.deployment import (
    make_node_key,
    make_tls_material,
    node_config_arg,
    superlink_command,
    supernode_command,
    write_app_project,
    write_flower_config,
)
from fedehr.federation.server_app import RUN_CONFIG_KEYS, settings_from_run_config


def test_supernode_command_carries_tls_key_and_the_sites_own_data(tmp_path):
    cmd = supernode_command(superlink="link.example.org:8000", cohort=tmp_path / "c d", site="ICU A",
                            root_certificates=tmp_path / "ca.crt", auth_key=tmp_path / "node", runtime_port=9101)
    assert Path(cmd[0]).name == "flower-supernode"
    args = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert args["--superlink"] == "link.example.org:8000" and args["--port"] == "9101"
    assert args["--root-certificates"] == str(tmp_path / "ca.crt")
    assert args["--auth-supernode-private-key"] == str(tmp_path / "node")
    assert args["--node-config"] == f"cohort='{(tmp_path / 'c d').resolve()}' site='ICU A' device='cpu'"
    assert "--insecure" not in cmd
    with pytest.raises(InputError, match="insecure"):
        supernode_command(superlink="x:1", cohort=tmp_path, insecure=True, auth_key=tmp_path / "k")


def test_node_config_values_flower_cannot_parse_are_refused(tmp_path):
    assert node_config_arg(tmp_path, "it's", "cpu").endswith('site="it\'s" device=\'cpu\'')
    with pytest.raises(InputError, match="node-config"):
        node_config_arg(tmp_path, "it's \"quoted\"")


def test_superlink_command_needs_tls_for_supernode_auth(tmp_path):
    tls = make_tls_material(tmp_path, hosts=("127.0.0.1", "link.example.org"))
    cmd = superlink_command(host="0.0.0.0", port=8443, tls=tls, supernode_auth=True)
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    assert cmd[cmd.index("--ssl-certfile") + 1] == str(tls.cert)
    assert "--disable-runtime-dependency-installation" in cmd
    with pytest.raises(InputError, match="TLS"):
        superlink_command(tls=None, supernode_auth=True)
    assert "--insecure" in superlink_command(tls=None, supernode_auth=False)


def test_tls_material_and_node_keys_have_the_formats_flower_expects(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    tls = make_tls_material(tmp_path, hosts=("127.0.0.1", "localhost"))
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    cert.verify_directly_issued_by(ca)
    assert tls.key.stat().st_mode & 0o077 == 0
    private, public = make_node_key(tmp_path / "keys", "site0")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()


def test_app_project_declares_every_run_config_key(tmp_path):
    app = write_app_project(tmp_path, {"run-dir": "/srv/runs/a", "config-json": "{}", "resume": True})
    project = tomllib.loads((app / "pyproject.toml").read_text())
    flwr = project["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "fedehr.federation.server_app:app",
                                  "clientapp": "fedehr.federation.client_app:app"}
    assert set(flwr["config"]) == set(RUN_CONFIG_KEYS) and flwr["config"]["resume"] is True
    with pytest.raises(InputError, match="unknown run config"):
        write_app_project(tmp_path, {"num-server-rounds": 3})


def test_flower_config_keeps_other_connections(tmp_path):
    write_flower_config(tmp_path, "a", "10.0.0.1:8000", root_certificates=tmp_path / "ca.crt")
    write_flower_config(tmp_path, "b", "127.0.0.1:8000", insecure=True, default=False)
    conf = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert conf["default"] == "a"
    assert conf["a"] == {"address": "10.0.0.1:8000", "root-certificates": str((tmp_path / "ca.crt").resolve())}
    assert conf["b"] == {"address": "127.0.0.1:8000", "insecure": True}


def test_server_app_settings_from_run_config(tmp_path):
    from fedehr.config import load_config

    cfg = load_config(None, ["min_sites=3", "round_timeout_s=30"])
    settings, got = settings_from_run_config({"run-dir": str(tmp_path), "config-json": json.dumps(cfg.to_dict()),
                                              "resume": True, "wait-s": 12.0})
    assert got == cfg and settings.kind == "deployment" and settings.resume
    assert (settings.min_sites, settings.expect_nodes, settings.round_timeout_s, settings.wait_s) == (3, 3, 30.0, 12.0)
    with pytest.raises(InputError, match="run-dir"):
        settings_from_run_config({"run-dir": "relative/path", "config-json": "{}"})
    with pytest.raises(InputError, match="experiment config"):
        settings_from_run_config({"run-dir": str(tmp_path)})


def test_cli_refuses_bad_input_before_starting_anything(tmp_path):
    from fedehr.cli import train as cli

    cohort = write_cohort(tmp_path / "cohort", n=30, n_sites=3)
    with pytest.raises(InputError, match="not a completed training run"):
        cli.sample(run=tmp_path, n=5, fmt="cohort", out=tmp_path / "o", seed=0, condition=[], prevalence=None,
                   device="cpu", overwrite=False)
    with pytest.raises(InputError, match="--condition"):
        cli._parse_condition(["mortality"])
    assert cli._parse_condition(["mortality=1", "Age=70.5"]) == {"mortality": 1.0, "Age": 70.5}
    with pytest.raises(InputError, match="several sites"):
        cli.site(cohort=cohort, superlink="127.0.0.1:1", site_name=None, root_certificates=None, auth_key=None,
                 insecure=True, device="cpu", runtime_port=9094)
    with pytest.raises(InputError, match="file not found"):
        cli.site(cohort=cohort, superlink="127.0.0.1:1", site_name="site0", root_certificates=tmp_path / "no.crt",
                 auth_key=None, insecure=False, device="cpu", runtime_port=9094)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    with pytest.raises(InputError, match="already exists"):
        cli.train(cohort=cohort, method="fedavg", out=tmp_path / "run", config=None, overrides=[], device="cpu",
                  resume=False, site=None, parallel=2, superlink=None, federated=None)
    with pytest.raises(InputError, match="nothing to resume"):
        cli.train(cohort=cohort, method=None, out=tmp_path / "fresh", config=None, overrides=[], device=None,
                  resume=True, site=None, parallel=2, superlink=None, federated=None)
    with pytest.raises(InputError, match="keeps its configuration"):
        cli.train(cohort=cohort, method="fedavg", out=tmp_path / "run", config=None, overrides=[], device=None,
                  resume=True, site=None, parallel=2, superlink=None, federated=None)


def test_config_presets_resolve_by_name(tmp_path, monkeypatch):
    from fedehr.cli.train import config_path

    monkeypatch.chdir(tmp_path)  # no configs/ here: the source checkout's presets are found
    assert config_path("tiny").name == "tiny.toml" and config_path("tiny").is_file()
    assert config_path(None) is None
    assert config_path(tmp_path / "mine.toml") == tmp_path / "mine.toml"  # a path stays a path
    with pytest.raises(InputError, match="preset"):
        config_path("no-such-preset")
