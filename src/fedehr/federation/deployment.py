"""Flower's deployment runtime: command lines, TLS material, SuperNode keys, app projects, processes.

One SuperLink runs at the coordinating centre (``flower-superlink``, HTTPS on one port for the Fleet,
Control and runtime APIs in flwr 1.41); every hospital runs one SuperNode on its own cohort
(``fedehr site`` builds the ``flower-supernode`` command line); the researcher submits a run with
``fedehr train --superlink NAME`` (``flwr run`` of a generated app project whose run config carries the
experiment). Processes are started and stopped by PID through :mod:`fedehr.federation.processes`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedehr.errors import FedEHRError, InputError
from fedehr.federation.processes import run_foreground

APP_NAME = "fedehr-run"


# ---- executables and environment -------------------------------------------------------------------------
def executable(name: str) -> str:
    """A Flower console script, preferably from this Python's own environment."""
    local = Path(sys.executable).with_name(name)
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FedEHRError(f"{name} not found; install fedehr with its Flower dependency (pip install fedehr)")
    return found


def flower_env(flwr_home: str | Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: telemetry off, no runtime ``uv sync``, optional FLWR_HOME, and this
    Python's script folder first on PATH (Flower starts flower-superexec / flwr-clientapp by name)."""
    env = dict(os.environ if base is None else base)
    scripts = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != scripts:
        env["PATH"] = os.pathsep.join([scripts, *filter(None, [env.get("PATH")])])
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


# ---- TLS certificates and SuperNode keys -----------------------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    ca: Path      # CA certificate: give it to every SuperNode (--root-certificates) and to the flwr CLI
    cert: Path    # SuperLink certificate (PEM), SAN = the hosts it is reached by
    key: Path     # SuperLink private key (PEM): stays on the SuperLink host


def make_tls_material(out_dir: str | Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"),
                      days: int = 365) -> TlsFiles:
    """A private CA and a SuperLink certificate for ``hosts`` (IP addresses or DNS names).

    For trials and tests; a production federation should use the certificates of its own PKI.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=days)}
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedehr federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
          .not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(out / "ca.crt", out / "server.pem", out / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


def make_node_key(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format, as Flower's SuperNode authentication expects.

    The private key stays at the hospital (``fedehr site --auth-key``); the public key is registered at the
    SuperLink with ``flwr supernode register KEY.pub CONNECTION``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


# ---- command lines ---------------------------------------------------------------------------------------
def superlink_command(*, host: str = "0.0.0.0", port: int = 8000, tls: TlsFiles | None = None,
                      supernode_auth: bool = True, database: str | Path | None = None) -> list[str]:
    """``flower-superlink`` for the coordinating centre (HTTPS unless ``tls`` is None)."""
    cmd = [executable("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if tls is None:
        if supernode_auth:
            raise InputError("SuperNode authentication needs TLS", field="tls", expected="TLS certificate files")
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def _toml_string(value: str, what: str) -> str:
    """A TOML string Flower's ``--node-config`` parser accepts (it cannot carry quotes inside values)."""
    if "'" not in value and "\n" not in value:
        return f"'{value}'"
    if '"' not in value and "\\" not in value and "\n" not in value:
        return f'"{value}"'
    raise InputError("cannot pass this value through Flower's --node-config", field=what, value=value,
                     expected="a value without both quote characters and without newlines")


def node_config_arg(cohort: str | Path, site: str | None = None, device: str = "cpu") -> str:
    parts = [f"cohort={_toml_string(str(Path(cohort).resolve()), 'cohort')}"]
    if site:
        parts.append(f"site={_toml_string(site, 'site')}")
    parts.append(f"device={_toml_string(device, 'device')}")
    return " ".join(parts)


def supernode_command(*, superlink: str, cohort: str | Path, site: str | None = None,
                      root_certificates: str | Path | None = None, auth_key: str | Path | None = None,
                      insecure: bool = False, runtime_port: int = 9094, device: str = "cpu",
                      max_wait_s: float | None = None) -> list[str]:
    """``flower-supernode`` for one hospital: its own cohort, TLS to the SuperLink, optional node key."""
    if insecure and (root_certificates or auth_key):
        raise InputError("--insecure cannot be combined with TLS certificates or an authentication key",
                         field="insecure")
    cmd = [executable("flower-supernode"), "--superlink", superlink,
           "--node-config", node_config_arg(cohort, site, device), "--port", str(runtime_port)]
    if insecure:
        cmd.append("--insecure")
    elif root_certificates:
        cmd += ["--root-certificates", str(root_certificates)]
    if auth_key:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    if max_wait_s is not None:
        cmd += ["--max-wait-time", str(max_wait_s)]
    return cmd


# ---- flwr CLI configuration and the app project ----------------------------------------------------------
def write_flower_config(flwr_home: str | Path, name: str, address: str, *,
                        root_certificates: str | Path | None = None, insecure: bool = False,
                        default: bool = True) -> Path:
    """Add (or replace) connection ``name`` in ``$FLWR_HOME/config.toml`` (other entries are kept)."""
    import tomli_w

    path = Path(flwr_home) / "config.toml"
    data: dict[str, Any] = tomllib.loads(path.read_text()) if path.is_file() else {}
    links = data.setdefault("superlink", {})
    entry: dict[str, Any] = {"address": address}
    if insecure:
        entry["insecure"] = True
    elif root_certificates is not None:
        entry["root-certificates"] = str(Path(root_certificates).resolve())
    links[name] = entry
    if default or "default" not in links:
        links["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path


def write_app_project(out_dir: str | Path, run_config: Mapping[str, Any]) -> Path:
    """A minimal Flower app project (pyproject.toml only) running fedehr's ServerApp / ClientApp.

    ``flwr run`` packages it and the SuperLink / SuperNodes import the components from the fedehr package
    installed in their environment. Its run config declares every key the ServerApp reads (Flower refuses
    run-config overrides of undeclared keys), with this run's values as defaults.
    """
    import tomli_w

    from fedehr import __version__
    from fedehr.federation.server_app import RUN_CONFIG_KEYS

    unknown = set(run_config) - set(RUN_CONFIG_KEYS) - {"cohort", "device", "seed"}
    if unknown:
        raise InputError("unknown run config keys", field="run_config", value=sorted(unknown),
                         expected=", ".join(sorted(RUN_CONFIG_KEYS)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    project = {
        "project": {"name": APP_NAME, "version": __version__, "description": "fedehr federated training run",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "fedehr",
            "components": {"serverapp": "fedehr.federation.server_app:app",
                           "clientapp": "fedehr.federation.client_app:app"},
            "config": {**RUN_CONFIG_KEYS, **dict(run_config)},
        }}},
    }
    (out / "pyproject.toml").write_text(tomli_w.dumps(project))
    return out


def _flwr_json(args: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    import json

    done = subprocess.run([executable("flwr"), *args, "--format", "json"], env=dict(env), capture_output=True,
                          text=True, timeout=300)
    text = done.stdout[done.stdout.find("{"):] if "{" in done.stdout else ""
    try:
        out = json.loads(text)
    except json.JSONDecodeError:
        out = {}
    if done.returncode != 0 or not out.get("success", False):
        raise FedEHRError(f"`flwr {' '.join(args)}` failed: {(done.stdout + done.stderr).strip()[-2000:]}")
    return out


def run_status(run_id: str, connection: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The run's record from ``flwr ls --run-id`` (status is e.g. 'running', 'finished:completed')."""
    runs = _flwr_json(["ls", connection, "--run-id", str(run_id)], env).get("runs", [])
    if not runs:
        raise FedEHRError(f"the SuperLink does not know run {run_id}")
    return runs[0]


def submit_run(app_dir: str | Path, connection: str, *, flwr_home: str | Path | None = None,
               poll_s: float = 2.0) -> dict[str, Any]:
    """``flwr run`` the app, stream its log until it ends, and return its final ``flwr ls`` record.

    ``flwr run --stream`` exits 0 even when the ServerApp fails, so the outcome is read from the run's
    status instead.
    """
    env = flower_env(flwr_home)
    run_id = str(_flwr_json(["run", str(app_dir), connection], env)["run-id"])
    try:
        run_foreground([executable("flwr"), "log", run_id, connection, "--stream"], env=env)
        status = run_status(run_id, connection, env)
        while not str(status.get("status", "")).startswith("finished"):
            time.sleep(poll_s)
            status = run_status(run_id, connection, env)
    except KeyboardInterrupt:
        raise FedEHRError(f"stopped following run {run_id}; it goes on at the SuperLink "
                          f"(`flwr stop {run_id} {connection}` ends it)") from None
    return status
