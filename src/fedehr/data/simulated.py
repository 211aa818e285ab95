"""SIMULATED multi-hospital ICU cohorts: a seeded generative model of vitals, sparse labs and mortality.

Nothing produced here is patient data. The generator exists so that fedehr runs end to end without any
download (the default of ``fedehr quickstart``) and so that tests and benchmarks can control how different
the hospitals are. The model is documented with its equations in docs/simulated.md; in short:

* hospitals k = 1..K get shifts in case mix (age, severity, mortality), charting intensity, missingness,
  ventilation threshold, size and device/assay offsets, each ``heterogeneity * scale * z_k`` with z_k spread
  over [-1, 1], so heterogeneity = 0 gives identical hospitals;
* stay i has a latent severity S_i(t) = s0_i + d_i t / 48 + u_i(t) (u an Ornstein-Uhlenbeck process), with
  d_i > 0 (deterioration) for most stays that die and d_i < 0 (recovery) for survivors;
* every variable is mu + offset_k + b_i + beta S_i(t) + circadian term + its own OU noise (on a log scale
  for skewed labs), so variables are coupled through S, and MAP = (SBP + 2 DBP) / 3 by construction;
* charting is a scheduled process thinned by a keep probability plus Poisson extras (vitals ~hourly, labs
  every 6-24 h in panels), more frequent in sicker stays.

Loader contract: see fedehr.data.sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedehr.data.catalogue import static_specs, temporal_specs
from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema
from fedehr.errors import InputError

SITE_KEYS: tuple[str, ...] = ("hospital", "none")

TEMPORAL: tuple[str, ...] = (
    "HR", "SysABP", "DiasABP", "MAP", "RespRate", "Temp", "SpO2", "FiO2", "GCS", "Urine", "MechVent",
    "Lactate", "Creatinine", "BUN", "Glucose", "K", "Na", "HCO3", "WBC", "Platelets", "pH",
)
STATIC: tuple[str, ...] = ("Age", "Gender", "Height", "Weight")
LABS: tuple[str, ...] = ("Lactate", "Creatinine", "BUN", "Glucose", "K", "Na", "HCO3", "WBC", "Platelets", "pH")

_DAY_H = 24.0
_TREND_H = 48.0  # the deterioration slope d_i is expressed per 48 h


@dataclass(frozen=True)
class _Physiology:
    """Latent model of one continuous variable: z = mu + b_i + beta S + A cos(2 pi (clock - peak) / 24) + e(t).

    ``log``: z is log(value) (right-skewed positive labs). sd_b: between-stay sd; sd_e, tau: stationary sd and
    time constant (h) of the within-stay OU noise e; sd_m: measurement noise of one measurement.
    """

    name: str
    mu: float
    beta: float
    sd_b: float
    sd_e: float
    tau: float
    sd_m: float
    amp: float = 0.0
    peak: float = 16.0
    log: bool = False


# "PP" (pulse pressure) is internal: SysABP = MAP + 2 PP / 3 and DiasABP = MAP - PP / 3.
_PHYS: tuple[_Physiology, ...] = (
    _Physiology("HR", np.log(86.0), 0.1, 0.13, 0.06, 3.0, 0.02, amp=0.045, peak=16.0, log=True),
    _Physiology("MAP", np.log(80.0), -0.075, 0.1, 0.055, 2.0, 0.025, amp=0.035, peak=15.0, log=True),
    _Physiology("PP", np.log(48.0), -0.05, 0.18, 0.07, 6.0, 0.05, log=True),
    _Physiology("RespRate", np.log(18.5), 0.13, 0.17, 0.11, 2.0, 0.05, amp=0.03, peak=15.0, log=True),
    _Physiology("Temp", 37.0, 0.35, 0.4, 0.25, 4.0, 0.1, amp=0.25, peak=18.0),
    _Physiology("SpO2", 97.0, -1.6, 1.1, 1.0, 2.0, 0.5),
    _Physiology("FiO2", 0.45, 0.09, 0.1, 0.05, 6.0, 0.02),
    _Physiology("GCS", 13.8, -2.0, 1.8, 0.8, 8.0, 0.0),
    _Physiology("Urine", np.log(90.0), -0.35, 0.4, 0.45, 2.0, 0.25, log=True),
    _Physiology("Lactate", np.log(1.5), 0.33, 0.3, 0.15, 8.0, 0.05, log=True),
    _Physiology("Creatinine", np.log(1.1), 0.18, 0.45, 0.08, 24.0, 0.04, log=True),
    _Physiology("BUN", np.log(22.0), 0.16, 0.5, 0.06, 24.0, 0.04, log=True),
    _Physiology("Glucose", np.log(135.0), 0.08, 0.2, 0.2, 6.0, 0.05, log=True),
    _Physiology("K", 4.1, 0.12, 0.35, 0.25, 12.0, 0.1),
    _Physiology("Na", 139.0, -0.3, 3.5, 1.2, 24.0, 0.8),
    _Physiology("HCO3", 24.0, -1.6, 3.0, 1.2, 12.0, 0.8),
    _Physiology("WBC", np.log(11.0), 0.13, 0.4, 0.1, 24.0, 0.05, log=True),
    _Physiology("Platelets", np.log(200.0), -0.12, 0.45, 0.06, 48.0, 0.05, log=True),
    _Physiology("pH", 7.39, -0.035, 0.045, 0.025, 8.0, 0.01),
)

# Charting of vitals: scheduled every `interval` h, each kept with probability q (logit shifted by hospital and
# severity), plus Poisson extras at `extra` per hour. Variables in one group share their charting events.
_VITAL_GROUPS: dict[str, tuple[tuple[str, ...], float, float, float]] = {
    # group: (variables, interval h, q, extra per h)
    "hr": (("HR",), 1.0, 0.93, 0.25),
    "bp": (("SysABP", "DiasABP", "MAP"), 1.0, 0.90, 0.20),  # invasive: only stays with an arterial line
    "rr": (("RespRate",), 1.0, 0.88, 0.15),
    "spo2": (("SpO2",), 1.0, 0.90, 0.20),
    "temp": (("Temp",), 4.0, 0.90, 0.03),
    "gcs": (("GCS",), 4.0, 0.85, 0.02),
    "urine": (("Urine",), 1.0, 0.80, 0.05),
}
# Lab panels: drawn every interval_i = base * exp(0.25 N(0,1)) * hospital factor * exp(-k_sev s0) h, plus an
# admission draw in the first bin. (variables, base interval h, severity shortening k_sev, admission prob).
_LAB_PANELS: dict[str, tuple[tuple[str, ...], float, float, float]] = {
    "chem": (("Creatinine", "BUN", "Glucose", "K", "Na", "HCO3"), 12.0, 0.15, 0.95),
    "haem": (("WBC", "Platelets"), 20.0, 0.10, 0.9),
    "gas": (("Lactate", "pH"), 12.0, 0.40, 0.7),
}
_GLUCOSE_POC = (6.0, 0.6)  # point-of-care glucose: interval h, keep probability


@dataclass(frozen=True)
class _Hospitals:
    """Per-hospital parameters, each (K,) (offset is (K, V) over _PHYS): shift = heterogeneity * scale * z."""

    size_weight: np.ndarray
    age_shift: np.ndarray       # years
    severity_shift: np.ndarray  # latent severity units
    mortality_shift: np.ndarray  # log-odds
    charting_shift: np.ndarray  # logit of charting keep probability; lab intervals scale by exp(-shift)
    missing_shift: np.ndarray   # logit of static missingness and of having no arterial line
    vent_shift: np.ndarray      # ventilation threshold
    offset: np.ndarray          # (K, V) device / assay offsets, in units of each variable's between-stay sd

    def describe(self) -> dict[str, dict[str, float]]:
        names = [f"hospital-{k + 1}" for k in range(len(self.age_shift))]
        return {n: {"size_weight": round(float(self.size_weight[k]), 4),
                    "age_shift_years": round(float(self.age_shift[k]), 3),
                    "severity_shift": round(float(self.severity_shift[k]), 4),
                    "mortality_shift_logodds": round(float(self.mortality_shift[k]), 4),
                    "charting_shift_logit": round(float(self.charting_shift[k]), 4),
                    "missing_shift_logit": round(float(self.missing_shift[k]), 4),
                    "ventilation_threshold_shift": round(float(self.vent_shift[k]), 4)}
                for k, n in enumerate(names)}


def detect(path: Path) -> bool:
    """Simulated cohorts are generated, never read from disk."""
    return False


def load(path: Path | None = None, *, hours: float = 48, bin_hours: float = 1, site_by: str | None = None,
         n_stays: int = 3000, n_sites: int = 4, heterogeneity: float = 0.5, seed: int = 0,
         **unknown: object) -> Cohort:
    """Generate a SIMULATED cohort of ``n_stays`` ICU stays from ``n_sites`` hospitals (deterministic in seed).

    ``heterogeneity`` in [0, 1] scales every between-hospital difference (0 = identical hospitals).
    Sites are "hospital-1".."hospital-K" (``site_by="hospital"``, the default) or one site "all" ("none").
    """
    if unknown:
        raise InputError("unknown option for the simulated source", field=", ".join(sorted(unknown)),
                         expected="n_stays, n_sites, heterogeneity, seed")
    if path is not None:
        raise InputError("the simulated source generates data and reads no files", file=path, field="path",
                         expected="no --path with --source simulated")
    site_by = SITE_KEYS[0] if site_by is None else site_by
    if site_by not in SITE_KEYS:
        raise InputError("cannot split simulated data by this key", field="site_by", value=site_by,
                         expected=" | ".join(SITE_KEYS))
    n_stays, n_sites, seed = _int(n_stays, "n_stays", 1), _int(n_sites, "n_sites", 1), _int(seed, "seed", 0)
    if n_sites > n_stays:
        raise InputError("more hospitals than stays", field="n_sites", value=n_sites,
                         expected=f"at most n_stays = {n_stays}")
    try:
        h = float(heterogeneity)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        h = float("nan")
    if not 0.0 <= h <= 1.0:
        raise InputError("heterogeneity out of range", field="heterogeneity", value=heterogeneity,
                         expected="a number in [0, 1]")
    schema = Schema(temporal=temporal_specs(TEMPORAL), static=static_specs(STATIC), labels=("mortality",),
                    hours=float(hours), bin_hours=float(bin_hours), source="simulated", site_by=site_by)

    rng = np.random.default_rng(seed)
    hosp = _hospitals(rng, n_sites, h)
    site = _assign_sites(rng, n_stays, hosp.size_weight)  # (N,) int in [0, K)
    static, age_z = _static(rng, hosp, site)
    t_mid = (np.arange(schema.n_bins) + 0.5) * schema.bin_hours  # (T,) hours since admission
    s0, mortality, severity = _severity(rng, hosp, site, age_z, t_mid, schema.bin_hours)
    vent = _ventilation(rng, hosp, site, severity)  # (N, T) bool
    counts = _charting(rng, schema, hosp, site, s0, severity, vent)  # (N, T, F) int
    values = _values(rng, schema, hosp, site, severity, vent, t_mid, counts)  # (N, T, F) float32

    sites = np.char.add("hospital-", (site + 1).astype(str)) if site_by == "hospital" else np.full(n_stays, "all")
    meta = {"source": "simulated",
            "simulated": {"n_sites": n_sites, "heterogeneity": h, "seed": seed, "n_stays": n_stays,
                          "hospitals": hosp.describe()}}
    return Cohort(schema, np.arange(1, n_stays + 1, dtype=np.int64), sites, static, values,
                  np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16),
                  mortality.astype(np.float32)[:, None], meta)


def _int(v: object, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
        raise InputError(f"{name} must be an integer >= {lo}", field=name, value=v, expected=f"an integer >= {lo}")
    return int(v)


def _spread(rng: np.random.Generator, k: int) -> np.ndarray:
    """(K,) hospital positions z_k: the K points evenly spaced over [-1, 1], in random order (0 when K = 1).

    Even spacing (rather than N(0, 1) draws) guarantees the hospitals really differ when heterogeneity > 0.
    """
    return rng.permutation(np.linspace(-1.0, 1.0, k)) if k > 1 else np.zeros(1)


def _hospitals(rng: np.random.Generator, k: int, h: float) -> _Hospitals:
    # z are drawn whatever h is, so changing heterogeneity rescales the same hospitals.
    return _Hospitals(
        size_weight=np.exp(0.6 * h * _spread(rng, k)),
        age_shift=7.0 * h * _spread(rng, k),
        severity_shift=0.45 * h * _spread(rng, k),
        mortality_shift=0.45 * h * _spread(rng, k),
        charting_shift=0.8 * h * _spread(rng, k),
        missing_shift=1.2 * h * _spread(rng, k),
        vent_shift=0.4 * h * _spread(rng, k),
        offset=0.3 * h * rng.standard_normal((k, len(_PHYS))),
    )


def _assign_sites(rng: np.random.Generator, n: int, weight: np.ndarray) -> np.ndarray:
    """(N,) hospital index: sizes n * weight / sum(weight) by largest remainder, each >= 1, in random order."""
    share = n * weight / weight.sum()
    size = np.floor(share).astype(np.int64)
    size[np.argsort(size - share)[: n - size.sum()]] += 1  # largest remainders first
    while (size < 1).any():  # only when n is close to K: take one stay from the largest hospital
        size[np.argmax(size)] -= 1
        size[np.argmin(size)] += 1
    return rng.permutation(np.repeat(np.arange(len(weight)), size))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def _static(rng: np.random.Generator, hosp: _Hospitals, site: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) Age, Gender, Height, Weight (NaN = not recorded) and (N,) standardised age."""
    n = len(site)
    age = np.clip(64.0 + hosp.age_shift[site] + 16.0 * rng.standard_normal(n), 18.0, 90.0)  # de-identified cap 90
    male = rng.random(n) < 0.56
    height = np.where(male, 176.0, 163.0) + 7.5 * rng.standard_normal(n)
    bmi = 27.0 * np.exp(0.2 * rng.standard_normal(n))
    weight = bmi * (height / 100.0) ** 2
    miss = hosp.missing_shift[site]
    height = np.where(rng.random(n) < _sigmoid(_logit(0.4) + miss), np.nan, height)
    weight = np.where(rng.random(n) < _sigmoid(_logit(0.08) + miss), np.nan, weight)
    static = np.stack([age, male.astype(np.float64), np.clip(height, 50, 250), np.clip(weight, 1, 400)], axis=1)
    return static.astype(np.float32), (age - 64.0) / 16.0


def _ou(rng: np.random.Generator, shape: tuple[int, ...], n_bins: int, step: float, tau: np.ndarray,
        sd: np.ndarray) -> np.ndarray:
    """(N, T, *shape[1:]) stationary Ornstein-Uhlenbeck paths sampled every ``step`` hours.

    e_0 ~ N(0, sd^2); e_t = phi e_{t-1} + sd sqrt(1 - phi^2) eps_t with phi = exp(-step / tau).
    """
    phi = np.exp(-step / np.asarray(tau, dtype=np.float64)).astype(np.float32)
    sd = np.asarray(sd, dtype=np.float32)
    innov = sd * np.sqrt(1.0 - phi**2)
    out = np.empty((shape[0], n_bins, *shape[1:]), dtype=np.float32)
    out[:, 0] = sd * rng.standard_normal(shape, dtype=np.float32)
    for t in range(1, n_bins):  # a loop over T time steps on (N, ...) arrays
        out[:, t] = phi * out[:, t - 1] + innov * rng.standard_normal(shape, dtype=np.float32)
    return out


def _severity(rng: np.random.Generator, hosp: _Hospitals, site: np.ndarray, age_z: np.ndarray,
              t_mid: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Baseline severity s0 (N,), mortality y (N,) and latent severity S (N, T).

    s0 = severity_k + 0.3 age_z + N(0, 1);  logit P(y = 1) = alpha + mortality_k + 1.2 s0 + 0.4 age_z + 1.0 v
    (v ~ N(0, 1) unobserved); S(t) = s0 + d t / 48 + u(t), u ~ OU(tau = 6 h, sd = 0.3);
    d ~ U(-0.4, 1.6) if y = 1 (mostly deteriorating) else N(-0.3, 0.3) (recovering).
    """
    n = len(site)
    s0 = hosp.severity_shift[site] + 0.3 * age_z + rng.standard_normal(n)
    logit = -2.4 + hosp.mortality_shift[site] + 1.2 * s0 + 0.4 * age_z + 1.0 * rng.standard_normal(n)
    y = rng.random(n) < _sigmoid(logit)
    d = np.where(y, rng.uniform(-0.4, 1.6, n), -0.3 + 0.3 * rng.standard_normal(n))
    u = _ou(rng, (n,), len(t_mid), step, np.array(6.0), np.array(0.3))
    severity = (s0[:, None] + d[:, None] * (t_mid / _TREND_H)[None, :]).astype(np.float32) + u  # (N, T)
    return s0, y, severity


def _ventilation(rng: np.random.Generator, hosp: _Hospitals, site: np.ndarray, severity: np.ndarray) -> np.ndarray:
    """(N, T) ventilated when S(t) + w_i > 0.6 + vent_k, w_i ~ N(0, 1) (smooth S: few switches)."""
    w = rng.standard_normal(len(site)).astype(np.float32)
    return severity + w[:, None] > (0.6 + hosp.vent_shift[site]).astype(np.float32)[:, None]


def _scheduled(rng: np.random.Generator, n_bins: int, step: float, interval: np.ndarray) -> np.ndarray:
    """(N, T) number of events at times phase_i + m * interval_i (phase ~ U(0, interval)) inside each bin."""
    interval = np.asarray(interval, dtype=np.float64)[:, None]  # (N, 1)
    phase = rng.random(interval.shape) * interval
    edges = np.arange(n_bins + 1, dtype=np.float64)[None, :] * step  # (1, T + 1)
    k = np.floor((edges - phase) / interval)  # events before each edge, up to a constant
    return np.diff(k, axis=1).astype(np.int64)


def _charting(rng: np.random.Generator, schema: Schema, hosp: _Hospitals, site: np.ndarray, s0: np.ndarray,
              severity: np.ndarray, vent: np.ndarray) -> np.ndarray:
    """(N, T, F) measurement counts per bin (vitals ~hourly with gaps; labs in panels every 6-24 h)."""
    n, t = severity.shape
    step = schema.bin_hours
    col = {name: j for j, name in enumerate(schema.temporal_names)}
    counts = np.zeros((n, t, len(col)), dtype=np.int32)
    chart = hosp.charting_shift[site][:, None]  # (N, 1)
    sick = 0.2 * severity  # sicker stays are charted more often (informative missingness)
    on_unit = rng.random((n, t)) >= 0.02  # off the unit (imaging, theatre): no vitals in that bin
    aline = rng.random(n) < _sigmoid(0.6 - hosp.missing_shift[site] + 0.8 * s0)  # invasive BP needs one
    ones = np.ones(n)
    for names, interval, q, extra in _VITAL_GROUPS.values():
        keep = _sigmoid(_logit(q) + chart + sick)
        c = rng.binomial(_scheduled(rng, t, step, interval * ones), keep) + rng.poisson(
            extra * step * np.exp(0.5 * chart) * ones[:, None], (n, t))
        c = c * on_unit
        if names[0] == "SysABP":
            c = c * aline[:, None]
        for name in names:
            counts[:, :, col[name]] = c
    # MechVent and FiO2 are charted when ventilated (q = 0.6) and rarely otherwise (q = 0.03).
    c = rng.binomial(_scheduled(rng, t, step, ones), np.where(vent, _sigmoid(_logit(0.6) + chart), 0.03))
    counts[:, :, col["MechVent"]] = c * on_unit
    counts[:, :, col["FiO2"]] = rng.binomial(c * on_unit, 0.9)
    for names, base, k_sev, p_admit in _LAB_PANELS.values():
        interval = base * np.exp(0.25 * rng.standard_normal(n) - hosp.charting_shift[site] - k_sev * s0)
        panel = rng.binomial(_scheduled(rng, t, step, np.clip(interval, 4.0, 48.0)), 0.95)
        panel[:, 0] += rng.random(n) < p_admit  # admission bloods
        for name in names:
            counts[:, :, col[name]] = rng.binomial(panel, 0.97)  # a test of the panel is occasionally missing
    poc_interval, poc_q = _GLUCOSE_POC
    counts[:, :, col["Glucose"]] += rng.binomial(_scheduled(rng, t, step, poc_interval * ones), poc_q)
    return counts


def _values(rng: np.random.Generator, schema: Schema, hosp: _Hospitals, site: np.ndarray, severity: np.ndarray,
            vent: np.ndarray, t_mid: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N, T, F) float32 per-bin means of the measurements (NaN where counts = 0), clipped to valid ranges."""
    n, t = severity.shape
    v = len(_PHYS)
    step = schema.bin_hours
    mu = np.array([p.mu for p in _PHYS], dtype=np.float32)
    beta = np.array([p.beta for p in _PHYS], dtype=np.float32)
    sd_b = np.array([p.sd_b for p in _PHYS], dtype=np.float32)
    amp = np.array([p.amp for p in _PHYS], dtype=np.float32)
    peak = np.array([p.peak for p in _PHYS], dtype=np.float32)
    # z (N, T, V) = mu + offset_k + b_i + beta S(t) + A cos(2 pi (clock - peak) / 24) + e(t)
    base = mu + (hosp.offset[site] * sd_b).astype(np.float32) + sd_b * rng.standard_normal((n, v), dtype=np.float32)
    clock = (rng.uniform(0.0, _DAY_H, n)[:, None] + t_mid[None, :]).astype(np.float32)  # (N, T) hour of day
    circadian = amp * np.cos(2 * np.pi * (clock[:, :, None] - peak) / _DAY_H)  # (N, T, V)
    z = base[:, None, :] + beta * severity[:, :, None] + circadian
    z += _ou(rng, (n, v), t, step, np.array([p.tau for p in _PHYS]), np.array([p.sd_e for p in _PHYS]))
    # Measurement noise of a bin mean over c measurements: sd_m / sqrt(c).
    idx = {p.name: j for j, p in enumerate(_PHYS)}
    col = {name: j for j, name in enumerate(schema.temporal_names)}
    c_of = {p.name: counts[:, :, col[p.name if p.name != "PP" else "SysABP"]] for p in _PHYS}
    noise = rng.standard_normal((n, t, v), dtype=np.float32)
    sd_m = np.array([p.sd_m for p in _PHYS], dtype=np.float32)
    c_all = np.stack([c_of[p.name] for p in _PHYS], axis=2)  # (N, T, V)
    z += sd_m * noise / np.sqrt(np.maximum(c_all, 1), dtype=np.float32)
    for p in _PHYS:
        if p.log:
            z[:, :, idx[p.name]] = np.exp(z[:, :, idx[p.name]])

    out = np.empty((n, t, len(col)), dtype=np.float32)
    for p in _PHYS:
        if p.name in col:
            out[:, :, col[p.name]] = z[:, :, idx[p.name]]
    mean_ap, pulse = z[:, :, idx["MAP"]], np.maximum(z[:, :, idx["PP"]], 15.0)
    out[:, :, col["SysABP"]] = mean_ap + 2.0 * pulse / 3.0
    out[:, :, col["DiasABP"]] = mean_ap - pulse / 3.0  # so MAP = (SBP + 2 DBP) / 3 exactly
    fio2 = z[:, :, idx["FiO2"]]
    out[:, :, col["FiO2"]] = np.where(vent, fio2, 0.21 + 0.3 * np.maximum(fio2 - 0.21, 0.0))  # room air / cannula
    out[:, :, col["GCS"]] = np.round(z[:, :, idx["GCS"]] - 4.0 * vent)  # sedation while ventilated
    out[:, :, col["MechVent"]] = vent
    for j, spec in enumerate(schema.temporal):
        np.clip(out[:, :, j], spec.valid_min, spec.valid_max, out=out[:, :, j])
    out[counts == 0] = np.nan
    return out
