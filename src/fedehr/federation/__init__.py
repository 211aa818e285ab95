"""The Flower runtime: the only package in fedehr that imports ``flwr``.

It carries the framework-free :class:`~fedehr.algorithms.protocol.Task` / ``Reply`` objects as Flower
Messages, in Flower's simulation runtime (``fedehr train``) or its deployment runtime (a SuperLink at the
coordinating centre and one ``fedehr site`` SuperNode per hospital):

* :mod:`.records`      Task / Reply  <->  Flower RecordDict, and the byte count of what travels;
* :mod:`.driver`       the server round loop: handshake, per-site messages, timeouts, accounting;
* :mod:`.server_app`   the ServerApp (reads its settings from Flower's run config);
* :mod:`.client_app`   the ClientApp (one handler: Message -> Task -> site handler -> Reply -> Message);
* :mod:`.simulation`   ``run_simulation`` on the Ray backend, with clean-up of every process it starts;
* :mod:`.deployment`   command lines, TLS material, node keys and app projects for SuperLink / SuperNodes;
* :mod:`.processes`    start / track / stop process trees by PID.

Flower-free helpers shared with the in-process baselines (:mod:`.baseline`): :mod:`.rundir` (run directory,
FAILED marker, final files), :mod:`.checkpoint` (state after every round), :mod:`.accounting` (per-round
records for metrics.json).

Flower telemetry is switched off unless the user asked for it explicitly (hospitals and CI must not phone
home); the variable is read when flwr is first imported, hence here, before any submodule imports flwr.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
