"""Experiment configuration: frozen, validated dataclasses loaded from TOML plus dotted overrides.

Sources, in order of precedence: dataclass defaults → a TOML file (``configs/*.toml``) → overrides
``section.key=value`` (CLI ``--set`` or Flower run_config). Every field is documented exactly once, in its
``metadata["help"]`` (``describe()`` lists them for CLI help and docs). Unknown keys raise an InputError that
names the key; values are type-checked and range-checked in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from fedehr.errors import InputError

DIFFUSION_METHODS: tuple[str, ...] = ("ehrdiff", "cdmt-ehr", "latent-cdmt")
METHODS: tuple[str, ...] = ("fedehr-gen", "fedavg", "fedavg-direct", "centralized", "local", *DIFFUSION_METHODS)
# Always federated; a diffusion method is federated when diffusion.training is fedavg or fedprox.
FEDERATED_METHODS: tuple[str, ...] = ("fedehr-gen", "fedavg", "fedavg-direct")
FEDERATED_TRAINING: tuple[str, ...] = ("fedavg", "fedprox")


def _f(default: Any, help: str, **checks: Any) -> Any:
    """A dataclass field with its one help string and optional checks (min, max, min_exclusive)."""
    if isinstance(default, tuple | list):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata={"help": help, **checks})
    return field(default=default, metadata={"help": help, **checks})


class _Section:
    """Generic validation shared by all config sections: types, Literal choices and numeric bounds."""

    _prefix: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key = f"{self._prefix}{f.name}"
            value = _coerce(getattr(self, f.name), hints[f.name], key)
            object.__setattr__(self, f.name, value)
            lo, hi, lo_ex = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("min_exclusive")
            items = value if isinstance(value, tuple) else (value,)
            for v in items:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                if lo is not None and v < lo:
                    raise InputError("value below the allowed minimum", field=key, value=value, expected=f">= {lo}")
                if lo_ex is not None and not v > lo_ex:
                    raise InputError("value out of range", field=key, value=value, expected=f"> {lo_ex}")
                if hi is not None and v > hi:
                    raise InputError("value above the allowed maximum", field=key, value=value, expected=f"<= {hi}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, _Section) else (list(v) if isinstance(v, tuple) else v)
        return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int→float and list→tuple; reject the rest."""
    if isinstance(tp, type) and issubclass(tp, _Section):
        if not isinstance(value, tp):
            raise InputError("expected a configuration table", field=key, value=value)
        return value
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise InputError("unsupported value", field=key, value=value, expected=" | ".join(map(str, choices)))
        return value
    if origin is tuple:
        (inner, _ellipsis) = get_args(tp)
        if not isinstance(value, list | tuple):
            raise InputError("expected a list", field=key, value=value, expected=f"a list of {inner.__name__}")
        return tuple(_coerce(v, inner, key) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError("expected true or false", field=key, value=value, expected="true | false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError("expected an integer", field=key, value=value, expected="an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError("expected a number", field=key, value=value, expected="a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError("expected a string", field=key, value=value, expected="a string")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # programming error, not user input


# ---- sections --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AEConfig(_Section):
    """Stage 1: the per-hour autoencoder E_φ: D → h1 → … → d, G_ψ: d → … → h1 → heads (ReLU)."""

    _prefix: typing.ClassVar[str] = "ae."
    hidden: tuple[int, ...] = _f((64, 32), "widths of the encoder's hidden layers, input side first "
                                 "(the decoder mirrors them)", min=1)
    latent: int = _f(16, "size d of the per-hour latent code h_t", min=1)
    lambda_num: float = _f(1.0, "weight of the masked MSE of numeric values", min=0.0)
    lambda_bin: float = _f(1.0, "weight of the BCE of observed binary values", min=0.0)
    lambda_cat: float = _f(1.0, "weight of the cross-entropy of observed categorical values", min=0.0)
    lambda_mask: float = _f(1.0, "weight of the BCE of the observation mask", min=0.0)
    lambda_carry: float = _f(1.0, "weight pulling numeric means towards the last measured value in unmeasured bins "
                             "(so values drawn there are plausible, and sparse labs weigh in the loss as much as "
                             "hourly vitals; docs/methods.md §4)", min=0.0)


@dataclass(frozen=True)
class TCVAEConfig(_Section):
    """Stage 2: temporal conditional VAE over latent sequences h_{1:T}, conditioned on label y and static s."""

    _prefix: typing.ClassVar[str] = "tcvae."
    latent: int = _f(16, "size of the sequence-level latent u", min=1)
    hidden: int = _f(64, "hidden size of the encoder BiGRU and the decoder GRU", min=1)
    layers: int = _f(1, "number of GRU layers in encoder and decoder", min=1, max=4)
    cond_dim: int = _f(16, "size of the label embedding emb(y)", min=1)
    time_dim: int = _f(8, "size of the learned per-bin time embedding fed to the non-autoregressive decoder",
                       min=1)
    sigma: float = _f(0.5, "fixed likelihood scale σ_h of the decoder mean for (standardised) latent codes; sets the "
                      "reconstruction / KL trade-off", min_exclusive=0.0)
    min_sigma: float = _f(0.05, "floor on the learned per-step sampling noise σ̂ of latent codes", min_exclusive=0.0)
    beta: float = _f(1.0, "final KL weight β of the ELBO", min=0.0)
    beta_warmup: float = _f(0.2, "fraction of stage-2 epochs over which β rises linearly from 0", min=0.0, max=1.0)
    lambda_static: float = _f(1.0, "weight of the static-feature reconstruction term", min=0.0)
    prior: Literal["conditional", "standard"] = _f(
        "conditional", "prior of u: 'conditional' learns p(u | y) = N(μ_p(y), σ_p(y)²) so that sampling with a "
        "label lands where that label's stays were encoded; 'standard' is N(0, I)")
    site_condition: bool = _f(
        True, "append a one-hot of the training site to the label code y (runs with 2+ sites): each site's "
        "stays are encoded and decoded as its own, and sampling gives a stay the site of the prior component "
        "its u came from (docs/methods.md §5)")
    presence: bool = _f(
        False, "model which temporal features a stay ever measures: the static decoder (per site) also predicts "
        "per-stay indicators e_f = [feature f observed at least once] from a detached u, sampling draws them with "
        "the statics, and a drawn stay observes a feature in at least one hour when e_f = 1 and in none when "
        "e_f = 0. Off by default: it makes per-stay missingness faithful, but in the methods benchmark it cost "
        "FedEHR-Gen 0.013 TSTR AUROC (docs/methods.md §5)")


@dataclass(frozen=True)
class StageConfig(_Section):
    """A training schedule: communication rounds × local epochs of Adam on mini-batches of stays."""

    _prefix: typing.ClassVar[str] = "stage."
    rounds: int = _f(3, "communication rounds (centralized/local runs do the same number of epoch blocks)", min=1)
    local_epochs: int = _f(1, "local epochs per round", min=1)
    lr: float = _f(1e-3, "learning rate", min_exclusive=0.0)
    batch_size: int = _f(64, "mini-batch size in stays", min=1)
    grad_clip: float = _f(1.0, "max global gradient norm (0 disables clipping)", min=0.0)
    weight_decay: float = _f(0.0, "weight decay", min=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = _f("adam", "optimiser")
    lr_schedule: Literal["constant", "cosine"] = _f(
        "constant", "learning rate over the stage's epochs, all rounds together: constant, or a half cosine from "
        "lr down to 0 (measured worse for FedEHR-Gen's stage 1, whose federated AE is short of steps rather than "
        "drifting: docs/methods.md §4)")


@dataclass(frozen=True)
class Stage1Config(StageConfig):
    _prefix: typing.ClassVar[str] = "stage1."


@dataclass(frozen=True)
class Stage2Config(StageConfig):
    _prefix: typing.ClassVar[str] = "stage2."


@dataclass(frozen=True)
class MatchingConfig(_Section):
    """Layer-wise matching aggregation of the stage-1 autoencoder (fedehr-gen only)."""

    _prefix: typing.ClassVar[str] = "matching."
    cost: Literal["l2", "bbp-map"] = _f("l2", "neuron matching cost: squared L2 to the leave-one-out global "
                                        "estimate, or FedMA's BBP-MAP cost (fixed global width)")
    sweeps: int = _f(3, "refinement passes of the assignment per layer", min=1)
    retrain_epochs: int = _f(0, "local epochs retraining the layers above a just-matched layer (FedMA's "
                             "layer-wise freeze and retrain; 0: match all layers in one server step, which "
                             "measured better, docs/methods.md §13)", min=0)
    site_init: Literal["independent", "common"] = _f("common", "round-0 initialisation: one common init "
                                                     "(measured better) or each site its own random init (FedMA)")
    sigma: float = _f(1.0, "BBP-MAP: per-site neuron noise σ", min_exclusive=0.0)
    sigma0: float = _f(1.0, "BBP-MAP: prior σ0 of global neurons", min_exclusive=0.0)


@dataclass(frozen=True)
class WeightingConfig(_Section):
    """Distribution-aware aggregation of the stage-2 TCVAE (fedehr-gen only; baselines use n_k weights)."""

    _prefix: typing.ClassVar[str] = "weighting."
    rule: Literal["fedavg", "uniform", "divergence-softmax", "inverse"] = _f(
        "divergence-softmax", "site weights: n_k | 1 | n_k exp(-D_k/τ) | n_k (1 + D_k/τ)")
    divergence: Literal["kl", "w2"] = _f("kl", "D_k between a site's aggregate posterior and the mixture")
    temperature: float = _f(0.0, "τ; 0 sets it from the round's D_k by tau_rule", min=0.0)
    tau_rule: Literal["max", "median"] = _f("max", "automatic τ: the largest D_k (every site keeps ≥ e^-1 of its "
                                            "n_k share) or the median (outlying sites can get ~0 weight)")
    min_temperature: float = _f(0.05, "floor on the automatic τ (nats), so divergences far below it (sampling "
                                "noise, early rounds near the prior) leave the weights ≈ n_k", min=0.0)


@dataclass(frozen=True)
class SamplingConfig(_Section):
    """How decoder outputs become a synthetic cohort."""

    _prefix: typing.ClassVar[str] = "sampling."
    mask: Literal["bernoulli", "threshold"] = _f("bernoulli", "observation mask: Bernoulli draw or p > 0.5")
    binary: Literal["bernoulli", "threshold"] = _f("bernoulli", "binary and categorical values: draw from the "
                                                   "predicted distribution, or take the most likely value")
    numeric: Literal["sample", "mean"] = _f("sample", "numeric values: draw from the decoder's Gaussian N(μ, σ²), "
                                            "or take its mean μ (smoother, less variable)")
    calibrate_mask: bool = _f(True, "after training, shift each feature's mask logit so the generator's expected "
                              "observed fraction equals the federated one (aggregate counts from the stats round)")
    calibrate_dispersion: bool = _f(True, "part of calibrate_mask (no effect without it): also fit a per-feature "
                                    "gain on the mask logits so that the spread across stays of a feature's "
                                    "observed bins matches the federated one, not only their mean (sites also "
                                    "send Σ_i o_if², o_if the observed bins of feature f in stay i, summed over "
                                    "their stays); docs/methods.md §6")
    calibrate_coobservation: bool = _f(True, "after the mask calibration, fit a Gaussian copula across features "
                                       "for each hour's mask draws, so that features measured together (lab "
                                       "panels, blood-pressure triples) share hours as often as in the federated "
                                       "data (sites send Σ_{i,t} o_itf o_itg, an F × F matrix summed over their "
                                       "stays and hours); every cell keeps its probability. docs/methods.md §6")
    calibrate_intensity: bool = _f(False, "after the mask copula, couple the features' stay-level mask logits "
                                   "so that the correlation over stays of their observed bins matches the "
                                   "federated one (sites send Σ_i o_if o_ig, an F × F matrix summed over their "
                                   "stays); each feature keeps its rate and spread. TCVAE methods only (the "
                                   "diffusion generators draw no calibrated mask). Off by default: it costs "
                                   "about 0.006 TSTR AUROC on PhysioNet (docs/methods.md §6)")
    calibrate_repeats: bool = _f(True, "after the other mask calibrations, let an observed numeric value repeat "
                                 "the stay's previous one with a per-feature probability h_f, fitted so that the "
                                 "share of measurements equal to the previous one matches the federated share "
                                 "(sites send two counts per feature): weight charted again unchanged, FiO2 left "
                                 "at a setting for hours; only features at or above repeat_min_share. TCVAE "
                                 "methods only. docs/methods.md §6")
    repeat_min_share: float = _f(0.5, "calibrate_repeats copies values only of the features whose federated share "
                                 "of repeated measurements is at least this (on PhysioNet weight, GCS and FiO2); "
                                 "the others keep the model's own draws. Over 6 re-sampled PhysioNet runs, 0.5 "
                                 "cost 0.002 TSTR AUROC against 0.011 for every feature (0), and kept most of the "
                                 "fall in the repeat gap (docs/methods.md §6)", min=0.0, max=1.0)
    intensity_min_sd: float = _f(0.1, "calibrate_intensity couples only the features whose stay-mean mask logit "
                                 "varies between stays by at least this SD (logits); the others are drawn at one "
                                 "rate in every stay and have no intensity to couple", min=0.0)
    calibrate_within: bool = _f(False, "after the other calibrations, scale each numeric feature's deviations "
                                "from its stay mean, x ← x̄ + λ_f (x − x̄), λ_f ∈ [0, 2], so that its "
                                "within-stay variance matches the federated one (sites send within-stay sums of "
                                "squares, summed over their stays). Off by default: no utility gain measured and "
                                "a larger autocorrelation gap (docs/methods.md §6)")
    calibrate_acf: bool = _f(True, "after training, set each numeric feature's noise autocorrelation ρ_f so that "
                             "the generator's lag-1 autocorrelation equals the federated real one (sites send "
                             "lag-1 sums in the stats round); noise_rho then applies to the latent noise only")
    round_to_resolution: bool = _f(True, "round each numeric value to its feature's recording grid (heart rate "
                                   "in whole beats, pH to 0.01, FiO2 in steps of 0.05; a bin holding k measurements "
                                   "to the grid's k-th parts, as their mean is), learned from counts the sites send "
                                   "of how many single measurements are multiples of each candidate step; static "
                                   "features too. docs/methods.md §6")
    resolution_share: float = _f(0.99, "a step is a feature's recording grid when at least this share of its single "
                                 "measurements are multiples of it (the largest such step of 1-2-5 steps from "
                                 "10^4 to 10^-4; none: not rounded)", min=0.5, max=1.0)
    latent_noise: float = _f(0.5, "scale of the TCVAE's learned per-step noise σ̂ added to latent codes before "
                             "the AE decodes them (0: decode the mean trajectory)", min=0.0)
    noise_rho: float = _f(0.9, "lag-1 autocorrelation of the sampling noise along time (AR(1)): the latent noise's, "
                          "and the numeric noise's unless calibrate_acf fits one per feature; 0 draws it "
                          "independently per bin", min=0.0, max=0.99)
    prior: Literal["site-moments", "learned"] = _f(
        "site-moments", "where u comes from when sampling: 'site-moments' draws from a mixture of Gaussians, one per "
        "(site, label pattern), built from aggregate posterior moments the sites send after training (ex-post "
        "density estimation: it fills the gap between the prior and where stays were encoded); 'learned' draws "
        "from the TCVAE's own prior p(u | y)")
    prior_min_count: int = _f(20, "a site sends the posterior moments of a label pattern only when it has at least "
                              "this many stays with it (fewer could expose individuals)", min=2)
    batch_size: int = _f(8192, "stays decoded per batch", min=1)
    max_count: int = _f(32, "largest per-bin measurement count tracked by the count distribution", min=1,
                        max=65535)

    @property
    def fits_dispersion(self) -> bool:
        """Whether calibration fits the mask gains (calibrate_dispersion acts within calibrate_mask)."""
        return self.calibrate_mask and self.calibrate_dispersion


@dataclass(frozen=True)
class DiffusionStageConfig(StageConfig):
    _prefix: typing.ClassVar[str] = "diffusion.stage."


@dataclass(frozen=True)
class DiffusionConfig(_Section):
    """Training of a diffusion generator (methods ehrdiff, cdmt-ehr, latent-cdmt; network sizes in the ``ehrdiff``
    / ``cdmt`` sub-tables, whose classes live with their models in fedehr.models.diffusion)."""

    _prefix: typing.ClassVar[str] = "diffusion."
    training: Literal["fedavg", "fedprox", "centralized", "local"] = _f(
        "fedavg", "federated with FedAvg or FedProx (Flower), pooled in one place, or one site alone (in-process); "
        "`fedehr train --federated fedavg | fedprox | none` sets it")
    prox_mu: float = _f(0.01, "FedProx proximal weight μ (training = fedprox)", min=0.0)
    label: str = _f("mortality", "outcome label the generator is conditioned on (classifier-free guidance); "
                    "empty: unconditional")
    static: bool = _f(True, "CDMT: model the static features as hour-constant channels")
    stage: DiffusionStageConfig = field(
        default_factory=lambda: DiffusionStageConfig(rounds=20, local_epochs=1, lr=1e-3, batch_size=256),
        metadata={"help": "diffusion training schedule"})
    ehrdiff: _ehrdiff.EHRDiffConfig = field(default_factory=lambda: _ehrdiff.EHRDiffConfig.preset("series"),
                                            metadata={"help": "EHRDiff network and sampler"})
    cdmt: _cdmt.CDMTConfig = field(default_factory=lambda: _cdmt.CDMTConfig(),
                                   metadata={"help": "CDMT-EHR network and sampler"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ehrdiff.mode != "series":
            raise InputError("cohort workflows train EHRDiff in series mode (code matrices: fit_codes)",
                             field="diffusion.ehrdiff.mode", value=self.ehrdiff.mode, expected="series")


@dataclass(frozen=True)
class ExperimentConfig(_Section):
    """One experiment: method, seed, runtime limits, model sizes, schedules and aggregation rules."""

    method: Literal["fedehr-gen", "fedavg", "fedavg-direct", "centralized", "local", "ehrdiff", "cdmt-ehr",
                    "latent-cdmt"] = _f("fedehr-gen", "training method")
    seed: int = _f(0, "master seed (sites derive theirs from it, their name and the round)", min=0)
    device: Literal["cpu", "cuda", "auto"] = _f("auto", "torch device; auto = cuda when available")
    min_sites: int = _f(1, "fewest sites that must reply to a round; fewer ends the run with an error", min=1)
    round_timeout_s: float = _f(600.0, "seconds the server waits for the replies of one round",
                                min_exclusive=0.0)
    local_site: str = _f("", "site trained alone by method 'local' (and by diffusion.training = 'local')")
    eval_sample: int = _f(1000, "synthetic stays sent to the sites for evaluation (0 skips evaluation)", min=0)
    ae: AEConfig = field(default_factory=AEConfig, metadata={"help": "stage-1 autoencoder"})
    tcvae: TCVAEConfig = field(default_factory=TCVAEConfig, metadata={"help": "stage-2 TCVAE"})
    stage1: Stage1Config = field(default_factory=lambda: Stage1Config(rounds=3, local_epochs=7),
                                 metadata={"help": "stage-1 schedule"})
    stage2: Stage2Config = field(default_factory=lambda: Stage2Config(rounds=10, local_epochs=1),
                                 metadata={"help": "stage-2 schedule"})
    matching: MatchingConfig = field(default_factory=MatchingConfig, metadata={"help": "layer-wise matching"})
    weighting: WeightingConfig = field(default_factory=WeightingConfig,
                                       metadata={"help": "distribution-aware aggregation"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "synthetic sampling"})
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig,
                                       metadata={"help": "diffusion generators (ehrdiff, cdmt-ehr, latent-cdmt)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method == "local" and not self.local_site:
            raise InputError("method 'local' needs the site to train on", field="local_site",
                             expected="a site name, e.g. local_site=\"hospital-1\"")
        if self.diffusion_method and self.diffusion.training == "local" and not self.local_site:
            raise InputError("diffusion.training = 'local' needs the site to train on", field="local_site",
                             expected="a site name, e.g. local_site=\"hospital-1\" (`fedehr train --site`)")

    @property
    def diffusion_method(self) -> bool:
        return self.method in DIFFUSION_METHODS

    @property
    def federated(self) -> bool:
        """Whether the run goes through Flower (else it trains in this process)."""
        if self.diffusion_method:
            return self.diffusion.training in FEDERATED_TRAINING
        return self.method in FEDERATED_METHODS

    @property
    def two_stage(self) -> bool:
        """Whether the generator models latent codes of a stage-1 autoencoder (FedEHR-Gen's methods but
        fedavg-direct, and latent-cdmt)."""
        return self.method not in ("fedavg-direct", "ehrdiff", "cdmt-ehr")

    def resolved_device(self) -> str:
        return resolve_device(self.device)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, file: str | Path | None = None, text: str | None = None
                  ) -> ExperimentConfig:
        return _build(cls, d, "", file, text)  # type: ignore[return-value]

    def to_toml(self, path: str | Path) -> Path:
        from fedehr.io_utils import atomic_file

        path = Path(path)
        with atomic_file(path) as fh:
            fh.write(self.dumps())  # type: ignore[attr-defined]
        return path

    def dumps(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when torch sees a GPU, else 'cpu'; an explicit 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but torch sees no GPU", field="device", value=device,
                         expected="cpu | auto on this machine")
    if device not in ("cpu", "cuda"):
        raise InputError("unknown device", field="device", value=device, expected="cpu | cuda | auto")
    return device


# ---- loading ---------------------------------------------------------------------------------------------
def _line_of(text: str | None, key: str) -> int | None:
    if not text:
        return None
    pat = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=|^\s*\[\s*{re.escape(key)}\s*\]")
    for i, line in enumerate(text.splitlines(), start=1):
        if pat.match(line):
            return i
    return None


def _build(cls: type, d: dict[str, Any], prefix: str, file: str | Path | None, text: str | None) -> Any:
    if not isinstance(d, dict):
        raise InputError("expected a table", file=file, field=prefix.rstrip(".") or "<root>", value=d)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in fields:
            raise InputError("unknown configuration key", file=file, line=_line_of(text, key),
                             field=f"{prefix}{key}", expected="one of: " + ", ".join(fields))
        tp = hints[key]
        if isinstance(tp, type) and issubclass(tp, _Section):
            # Merge onto the class default so a section given in part keeps its other defaults.
            default = fields[key].default_factory()  # type: ignore[misc]
            merged = {**default.to_dict(), **value} if isinstance(value, dict) else value
            kwargs[key] = _build(tp, merged, f"{prefix}{key}.", file, text)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except InputError as e:
        if file is not None and e.file is None:
            raise InputError(str(e), file=file, line=_line_of(text, (e.field or "").split(".")[-1])) from None
        raise


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'stage1.rounds=5'`` → (['stage1', 'rounds'], 5); the value is read as TOML, else as a bare string."""
    if "=" not in item:
        raise InputError("override must look like section.key=value", field="override", value=item)
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key or any(not part for part in key.split(".")):
        raise InputError("override has an empty key", field="override", value=item)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError("override addresses a value, not a table", field=".".join(path), value=item)
        node[path[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``section.key=value`` overrides."""
    text = None
    d: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError("configuration file not found", file=path)
        text = path.read_text()
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"malformed TOML: {e}", file=path, line=getattr(e, "lineno", None)) from None
    d = apply_overrides(d, list(overrides or []))
    return ExperimentConfig.from_dict(d, file=path, text=text)


def describe(cls: type = ExperimentConfig, prefix: str = "", obj: Any = None) -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) of every field, for CLI help and the configuration reference."""
    rows: list[tuple[str, str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    obj = cls() if obj is None else obj
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = getattr(obj, f.name)
        if isinstance(tp, type) and issubclass(tp, _Section):
            rows.extend(describe(type(value), f"{prefix}{f.name}.", value))
            continue
        if get_origin(tp) is Literal:
            tname = " | ".join(map(str, get_args(tp)))
        elif get_origin(tp) is tuple:
            tname = f"list[{get_args(tp)[0].__name__}]"
        else:
            tname = tp.__name__
        rows.append((f"{prefix}{f.name}", tname, list(value) if isinstance(value, tuple) else value,
                     f.metadata.get("help", "")))
    return rows


# The diffusion networks' config sections live with their models, which build on _f / _Section above: imported
# at the end, as modules (not names), so the import works whichever of the two modules is imported first.
from fedehr.models.diffusion import cdmt as _cdmt  # noqa: E402
from fedehr.models.diffusion import ehrdiff as _ehrdiff  # noqa: E402
