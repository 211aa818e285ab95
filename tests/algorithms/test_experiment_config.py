"""ExperimentConfig: TOML + dotted overrides, validation with named keys, round trips, presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedehr.config import METHODS, ExperimentConfig, describe, load_config, resolve_device
from fedehr.errors import InputError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["tiny.toml", "quickstart.toml", "fedehr-gen.toml"])
def test_presets_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.method == "fedehr-gen"
    for m in METHODS:  # every method is valid with every preset
        load_config(CONFIGS / name, [f"method={m}", "local_site=a"])


def test_overrides_and_types():
    cfg = load_config(None, ["stage1.rounds=5", "method=fedavg", "ae.hidden=[8, 4]", "tcvae.sigma=1",
                             "weighting.rule=inverse", "sampling.calibrate_mask=false"])
    assert cfg.stage1.rounds == 5 and cfg.method == "fedavg" and cfg.ae.hidden == (8, 4)
    assert cfg.tcvae.sigma == 1.0 and isinstance(cfg.tcvae.sigma, float)
    assert cfg.weighting.rule == "inverse" and cfg.sampling.calibrate_mask is False
    assert cfg.stage1.local_epochs == ExperimentConfig().stage1.local_epochs  # untouched keys keep defaults


def test_unknown_key_names_key_and_line(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('method = "fedavg"\n\n[stage1]\nrounds = 2\nrnds = 3\n')
    with pytest.raises(InputError) as e:
        load_config(p)
    msg = str(e.value)
    assert "stage1.rnds" in msg and "line 5" in msg and str(p) in msg and "rounds" in msg
    with pytest.raises(InputError, match="nosuch"):
        load_config(None, ["nosuch=1"])


@pytest.mark.parametrize(("override", "needle"), [
    ("stage1.rounds=0", ">= 1"), ("stage1.rounds=1.5", "integer"), ("method=magic", "fedehr-gen | fedavg"),
    ("tcvae.sigma=0", "> 0.0"), ("ae.hidden=3", "list"), ("sampling.calibrate_mask=1", "true | false"),
    ("method=local", "local_site"), ("matching.cost=cosine", "l2 | bbp-map"),
])
def test_invalid_values_are_rejected(override, needle):
    with pytest.raises(InputError, match=None) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "quickstart.toml", ["seed=7", "ae.hidden=[32, 16]"])
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    cfg.to_toml(tmp_path / "r.toml")
    assert load_config(tmp_path / "r.toml") == cfg


def test_every_field_is_documented_once():
    rows = describe()
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys))
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]
    assert {"method", "seed", "device", "min_sites", "round_timeout_s", "local_site", "eval_sample",
            "matching.cost", "weighting.rule", "stage2.rounds"} <= set(keys)


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")
