"""Cohort ⇄ network tensors: the per-hour input x_t, static conditioning s, label code y, and their inverse.

Per hour (F temporal features, F = F_num + F_bin + F_cat, C_j categories of categorical feature j)::

    x_t = [ z_num (F_num) | v_bin (F_bin) | onehot_cat (Σ C_j) | m_t (F) ]        D = F_num + F_bin + Σ C_j + F

z_num are normalised numeric values (fedehr.data.transforms.Normaliser) carried forward from the stay's last
measurement (0, the population mean, before the first one), v_bin binary values (NaN → 0), m_t the observation
mask, ordered numeric, binary, categorical so every block is contiguous.
Decoder heads use the same layout plus one block: numeric means μ, binary logits, categorical logits, mask
logits, then numeric log-variances log σ² (the noise added when sampling), width D_out = D + F_num.
The static vector s (S features) has the same four blocks, its last block marking *observed* static values.
Labels y (L) are coded as [y with NaN → 0 | known (L)] so stays with an unknown outcome can still train.

``heads_loss`` is the reconstruction negative log-likelihood shared by the autoencoder, the direct TCVAE and
the TCVAE's static head; ``sample_heads`` draws from it and ``to_arrays`` turns draws back into Cohort arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F_

from fedehr.data.cohort import Cohort
from fedehr.data.resolution import grid_scale
from fedehr.data.schema import FeatureSpec, Schema
from fedehr.data.transforms import Normaliser
from fedehr.models.mask_copula import cholesky_t, correlated_uniforms
from fedehr.models.stay_intensity import IntensityMap, apply_intensity


@dataclass(frozen=True)
class Blocks:
    """Column layout of one feature group (temporal or static)."""

    num: tuple[int, ...]        # original feature indices of numeric features
    bin: tuple[int, ...]
    cat: tuple[int, ...]
    cat_sizes: tuple[int, ...]  # C_j per categorical feature

    @classmethod
    def of(cls, specs: tuple[FeatureSpec, ...]) -> Blocks:
        idx = {k: tuple(i for i, s in enumerate(specs) if s.kind == k) for k in ("numeric", "binary", "categorical")}
        return cls(idx["numeric"], idx["binary"], idx["categorical"],
                   tuple(len(specs[i].categories) for i in idx["categorical"]))

    @property
    def n(self) -> int:
        return len(self.num) + len(self.bin) + len(self.cat)

    @property
    def order(self) -> np.ndarray:
        """Original feature index of each mask column (numeric, binary, categorical)."""
        return np.array(self.num + self.bin + self.cat, dtype=np.int64)

    @property
    def width(self) -> int:
        """Width of the encoded vector (x_t or s)."""
        return len(self.num) + len(self.bin) + sum(self.cat_sizes) + self.n

    @property
    def out_width(self) -> int:
        """Width of the decoder heads: the encoded layout plus one log-variance per numeric feature."""
        return self.width + len(self.num)

    # Slices of the four blocks.
    @property
    def s_num(self) -> slice:
        return slice(0, len(self.num))

    @property
    def s_bin(self) -> slice:
        return slice(len(self.num), len(self.num) + len(self.bin))

    @property
    def s_cat(self) -> slice:
        a = len(self.num) + len(self.bin)
        return slice(a, a + sum(self.cat_sizes))

    @property
    def s_mask(self) -> slice:
        return slice(self.width - self.n, self.width)

    @property
    def s_logvar(self) -> slice:
        return slice(self.width, self.out_width)


@dataclass(frozen=True)
class Layout:
    temporal: Blocks
    static: Blocks
    n_labels: int
    n_bins: int

    @classmethod
    def of(cls, schema: Schema) -> Layout:
        return cls(Blocks.of(schema.temporal), Blocks.of(schema.static), len(schema.labels), schema.n_bins)

    @property
    def x_dim(self) -> int:
        return self.temporal.width

    @property
    def out_dim(self) -> int:
        return self.temporal.out_width

    @property
    def s_dim(self) -> int:
        return self.static.width

    @property
    def y_dim(self) -> int:
        return 2 * self.n_labels


# ---- encoding (numpy, vectorised over stays and hours) ------------------------------------------------------
def forward_fill(z: np.ndarray) -> np.ndarray:
    """(N, T, F) → the last non-NaN value at or before each bin, 0 before a stay's first value."""
    t = z.shape[1]
    ok = np.isfinite(z)
    idx = np.where(ok, np.arange(t)[None, :, None], -1)
    np.maximum.accumulate(idx, axis=1, out=idx)                       # last observed bin (−1: none yet)
    filled = np.take_along_axis(np.nan_to_num(z, nan=0.0), np.maximum(idx, 0), axis=1)
    return np.where(idx >= 0, filled, 0.0).astype(np.float32)


def _encode_group(raw: np.ndarray, z: np.ndarray, observed: np.ndarray, b: Blocks) -> np.ndarray:
    """raw/z/observed (..., n) → (..., width) float32 in block layout (temporal numeric values carried forward)."""
    zn = z[..., list(b.num)]
    zn = forward_fill(zn) if zn.ndim == 3 else np.nan_to_num(zn, nan=0.0)
    parts = [zn, np.nan_to_num(raw[..., list(b.bin)], nan=0.0)]
    for j, c in zip(b.cat, b.cat_sizes, strict=True):
        code = raw[..., j]
        ok = np.isfinite(code)
        parts.append((np.where(ok, code, -1)[..., None] == np.arange(c)).astype(np.float32))  # (..., C_j)
    parts.append(observed[..., b.order].astype(np.float32))
    return np.concatenate(parts, axis=-1).astype(np.float32)


def encode_temporal(values: np.ndarray, counts: np.ndarray, normaliser: Normaliser, layout: Layout) -> np.ndarray:
    """(N, T, F) values + counts → x (N, T, D) float32."""
    return _encode_group(values, normaliser.transform(values), counts > 0, layout.temporal)


def encode_static(static: np.ndarray, normaliser: Normaliser, layout: Layout) -> np.ndarray:
    """(N, S) raw static → s (N, S_enc) float32 (observed indicators in the last block)."""
    return _encode_group(static, normaliser.transform_static(static), np.isfinite(static), layout.static)


def encode_labels(labels: np.ndarray) -> np.ndarray:
    """(N, L) labels with NaN = unknown → (N, 2L) [y | known]."""
    known = np.isfinite(labels)
    return np.concatenate([np.where(known, labels, 0.0), known], axis=1).astype(np.float32)


def presence(counts: np.ndarray) -> np.ndarray:
    """(N, T, F) measurement counts → (N, F) float32 presence indicators e_f: 1 where the stay measured temporal
    feature f at least once (schema order)."""
    return (counts > 0).any(axis=1).astype(np.float32)


def encode_cohort(cohort: Cohort, normaliser: Normaliser) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (N, T, D), s (N, S_enc), y (N, 2L))."""
    layout = Layout.of(cohort.schema)
    return (encode_temporal(cohort.values, cohort.counts, normaliser, layout),
            encode_static(cohort.static, normaliser, layout), encode_labels(cohort.labels))


# ---- reconstruction likelihood (torch) ---------------------------------------------------------------------
LOGVAR_MIN, LOGVAR_MAX = -7.0, 3.0  # σ between 0.03 and 4.5 normalised units


def heads_loss(out: torch.Tensor, target: torch.Tensor, b: Blocks, *, lambda_num: float = 1.0,
               lambda_bin: float = 1.0, lambda_cat: float = 1.0, lambda_mask: float = 1.0, lambda_carry: float = 0.0
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example negative log-likelihood of ``target`` (B, ..., width) under head outputs ``out``
    (B, ..., out_width).

    Sums over all non-batch elements: masked squared error of numeric means, plus ½[(x − sg(μ))²/σ² + log σ²]
    for the noise head (sg = stop-gradient: fitted to the residual, σ cannot let the mean give up on a feature),
    masked BCE of binary values, masked CE of categorical values, BCE of the mask. Returns ((B,) total,
    {part: (B,)}).
    """
    m = target[..., b.s_mask]  # (B, ..., n) observed
    n_num, n_bin = len(b.num), len(b.bin)
    dims = tuple(range(1, out.dim()))
    parts: dict[str, torch.Tensor] = {}
    if n_num:
        mean, lv, x = out[..., b.s_num], out[..., b.s_logvar], target[..., b.s_num]
        m_num = m[..., :n_num]
        w = m_num
        if lambda_carry > 0 and target.dim() == 3:  # (B, T, ·): bins after the first measurement
            seen = torch.cummax(m_num, dim=1).values
            w = m_num + lambda_carry * (seen - m_num)
        lv_c = lv.clamp(LOGVAR_MIN, LOGVAR_MAX)
        noise = 0.5 * ((x - mean.detach()) ** 2 * torch.exp(-lv_c) + lv_c)  # measurement noise: measured bins only
        parts["num"] = ((x - mean) ** 2 * w + noise * m_num).sum(dims)
    if n_bin:
        bce = F_.binary_cross_entropy_with_logits(out[..., b.s_bin], target[..., b.s_bin], reduction="none")
        parts["bin"] = (bce * m[..., n_num:n_num + n_bin]).sum(dims)
    if b.cat:
        ce = torch.zeros_like(m[..., 0])
        a = b.s_cat.start
        for j, c in enumerate(b.cat_sizes):  # loop over categorical features (few)
            logits, onehot = out[..., a:a + c], target[..., a:a + c]
            ce = ce + (-(F_.log_softmax(logits, dim=-1) * onehot).sum(-1)) * m[..., n_num + n_bin + j]
            a += c
        parts["cat"] = ce.sum(dims[:-1]) if ce.dim() > 1 else ce
    parts["mask"] = F_.binary_cross_entropy_with_logits(out[..., b.s_mask], m, reduction="none").sum(dims)
    lam = {"num": lambda_num, "bin": lambda_bin, "cat": lambda_cat, "mask": lambda_mask}
    total = sum(lam[k] * v for k, v in parts.items())
    return total, parts  # type: ignore[return-value]


# ---- sampling (torch) and decoding back to cohort arrays ---------------------------------------------------
def draw_bernoulli(p: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """Bool draws with probabilities p ('bernoulli'), or p > ½ ('threshold')."""
    if mode == "threshold":
        return p > 0.5
    return torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype) < p


def ar1_noise(shape: tuple[int, ...], rho: float | torch.Tensor, *, generator: torch.Generator | None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise, (B, T, D) with lag-1 autocorrelation ρ along T (stationary AR(1));
    ε_t = ρ ε_{t−1} + √(1 − ρ²) η_t. ρ is one number or one per last-axis column (D,); ρ = 0 gives independent
    draws; tensors without a time axis ignore ρ."""
    eps = torch.randn(shape, generator=generator, device=device)
    if len(shape) != 3 or (not isinstance(rho, torch.Tensor) and rho <= 0):
        return eps
    r = torch.as_tensor(rho, dtype=eps.dtype, device=eps.device)   # () or (D,)
    c = (1.0 - r**2).sqrt()
    for t in range(1, shape[1]):  # a loop over time steps, vectorised over stays and features
        eps[:, t].mul_(c).addcmul_(eps[:, t - 1], r)
    return eps


def sample_heads(out: torch.Tensor, b: Blocks, *, generator: torch.Generator | None, mask_mode: str = "bernoulli",
                 binary_mode: str = "bernoulli", numeric_mode: str = "sample", rho: float = 0.0
                 ) -> dict[str, torch.Tensor]:
    """Draw from head outputs (..., out_width): num (normalised), bin (0/1), cat (codes), observed (bool, mask
    order). numeric_mode 'sample' draws μ + σ ε (ε AR(1) along time with lag-1 correlation ρ), 'mean' returns μ."""
    num = out[..., b.s_num]
    if numeric_mode == "sample" and b.num:
        sd = torch.exp(0.5 * out[..., b.s_logvar].clamp(LOGVAR_MIN, LOGVAR_MAX))
        num = num + sd * ar1_noise(tuple(num.shape), rho, generator=generator, device=out.device)
    draws = {"num": num, "bin": draw_bernoulli(torch.sigmoid(out[..., b.s_bin]), binary_mode, generator)}
    codes = []
    a = b.s_cat.start
    for c in b.cat_sizes:
        logits = out[..., a:a + c]
        if binary_mode == "threshold":
            codes.append(logits.argmax(-1))
        else:  # Gumbel-max draw, vectorised over stays and hours
            u = torch.rand(logits.shape, generator=generator, device=out.device).clamp_(1e-12, 1.0)
            codes.append((logits - torch.log(-torch.log(u))).argmax(-1))
        a += c
    draws["cat"] = torch.stack(codes, -1) if codes else out.new_zeros((*out.shape[:-1], 0), dtype=torch.long)
    draws["observed"] = draw_bernoulli(torch.sigmoid(out[..., b.s_mask]), mask_mode, generator)
    return draws


def draws_to_encoding(d: dict[str, torch.Tensor], b: Blocks) -> torch.Tensor:
    """Drawn values back into the block layout (to feed generated static features into the decoder)."""
    obs = d["observed"].to(d["num"].dtype)
    n_num, n_bin = len(b.num), len(b.bin)
    parts = [d["num"] * obs[..., :n_num], d["bin"].to(obs.dtype) * obs[..., n_num:n_num + n_bin]]
    for j, c in enumerate(b.cat_sizes):
        parts.append(F_.one_hot(d["cat"][..., j], c).to(obs.dtype) * obs[..., n_num + n_bin + j, None])
    parts.append(obs)
    return torch.cat(parts, -1)


class NumericInverse:
    """Float32 torch version of the Normaliser's inverse for the numeric features of one group, in block order:
    x = exp(z s + m) + a for log-normalised features, z s + m otherwise (tested against Normaliser)."""

    def __init__(self, columns, b: Blocks, device: str | torch.device = "cpu") -> None:
        idx = list(b.num)
        origin = np.asarray(columns.origin, dtype=np.float64)[idx]
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
        self.scale, self.shift = as_t(np.asarray(columns.scale)[idx]), as_t(np.asarray(columns.shift)[idx])
        self.log = torch.as_tensor(np.isfinite(origin), device=device)
        self.origin = as_t(np.where(np.isfinite(origin), origin, 0.0))

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        g = z * self.scale + self.shift
        return torch.where(self.log, torch.exp(g) + self.origin, g)


def to_tensors(d: dict[str, torch.Tensor], b: Blocks, inverse: NumericInverse, lo: torch.Tensor, hi: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws → raw values (..., n) float32 in schema order, clipped to [lo, hi], NaN where not observed; and the
    observation mask (..., n) bool. Stays on the draws' device (one transfer at the end)."""
    parts = [inverse(d["num"]), d["bin"].to(d["num"].dtype), d["cat"].to(d["num"].dtype)]
    back = torch.as_tensor(np.argsort(b.order), device=d["num"].device)  # block order → schema order
    values = torch.cat(parts, -1).index_select(-1, back)
    observed = d["observed"].index_select(-1, back)
    values = torch.clamp(values, lo, hi)
    return torch.where(observed, values, torch.full_like(values, float("nan"))), observed


def to_arrays(d: dict[str, torch.Tensor], b: Blocks, inverse) -> np.ndarray:
    """Draws → (..., n) float32 raw values in schema order, NaN where not observed.

    ``inverse`` is Normaliser.inverse_transform (temporal) or .inverse_transform_static.
    """
    shape = (*d["observed"].shape[:-1], b.n)
    z = np.zeros(shape, dtype=np.float32)
    if b.num:
        z[..., list(b.num)] = d["num"].float().cpu().numpy()
    if b.bin:
        z[..., list(b.bin)] = d["bin"].float().cpu().numpy()
    if b.cat:
        z[..., list(b.cat)] = d["cat"].float().cpu().numpy()
    raw = inverse(z)
    observed = np.empty(shape, dtype=bool)
    observed[..., b.order] = d["observed"].cpu().numpy()
    raw[~observed] = np.nan
    return raw


# ---- fast temporal sampling: head outputs → (values, counts) in one pass --------------------------------------
def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [a, b) of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


class TemporalSampler:
    """Temporal head outputs → Cohort ``values`` and ``counts`` for a block of stays, written in place.

    The same distribution as ``sample_heads`` → ``to_tensors`` → an inverse-CDF count draw (the reference path),
    reorganised so that every pass runs over whole contiguous (B, T, F) tensors in schema order:

    * the heads are read as four *sampling heads*, features in schema order (F_d = F_bin + Σ C_j):
          g = s·μ + m (B, T, F) | a·ℓ + b (B, T, F) | ½ log σ² (B, T, F) | [binary | categorical logits] (B, T, F_d)
      (s, m the normaliser's scale and shift, a and b the calibrated mask gains and offsets; g = 0 and s = 0 for
      non-numeric features). Each is an affine column map of the block layout (``apply_map``) that a linear head absorbs
      once (``fold_linear``): no per-batch permutation, scaling or offset add remains;
    * x = g + s·σ·ε (ε AR(1) along time) is the value on the normalised (log) scale; log features get
      exp(x) + a on contiguous column runs; values are clipped to [valid_min, valid_max];
    * with within-stay scales λ_f (sampling.calibrate_within) a numeric feature's observed values become
      x̄ + λ_f (x − x̄), x̄ the stay's mean over its observed bins, clipped again;
    * mask and count share one uniform u per cell: observed ⟺ u < p = σ(a·ℓ + b), and given that, w = u / p is
      U(0, 1), so count = Σ_j [w < 1 − C_{j−1}] (C_j = P(count ≤ j + 1) from the federated count distribution,
      C_{−1} = 0) is an exact inverse-CDF draw; unobserved cells have w ≥ 1 and count 0. In float32,
      u < p ⟺ u / p < 1, so the mask and the counts agree exactly;
    * with ``intensity`` (sampling.calibrate_intensity, fedehr.models.stay_intensity) each stay's mask logits
      are first shifted, per feature and constant over hours, so that the stay-level intensities of the features
      have the fitted dependence;
    * with ``mask_corr`` R (sampling.calibrate_coobservation) the uniforms of one (stay, hour) are Φ(L ε),
      R = L Lᵀ (fedehr.models.mask_copula): each still U(0, 1), so all of the above holds, but coupled across
      features, so that features measured together share their hours;
    * with ``quantum`` q_f (sampling.round_to_resolution, fedehr.data.resolution) a numeric value in a cell with
      k measurements is rounded to the nearest multiple of q_f / k (a mean of k values recorded on the grid q_f),
      then clipped again; the mask and counts do not depend on it;
    * with ``repeat_prob`` h_f (sampling.calibrate_repeats) an observed numeric value after a stay's first
      repeats the previous observed value with probability h_f. Last, after the rounding, so that a copy equals
      its original exactly.
    """

    COMPARE_MAX = 8  # count supports up to this size use K comparisons, larger ones a binary search

    def __init__(self, specs: tuple[FeatureSpec, ...], columns, count_pmf: np.ndarray | None,
                 mask_bias: np.ndarray | None = None, *, mask_scale: np.ndarray | None = None,
                 within_scale: np.ndarray | None = None, mask_corr: np.ndarray | None = None,
                 quantum: np.ndarray | None = None, intensity: IntensityMap | None = None,
                 repeat_prob: np.ndarray | None = None,
                 mask_mode: str = "bernoulli",
                 binary_mode: str = "bernoulli", numeric_mode: str = "sample", rho: float | np.ndarray = 0.0,
                 device: str | torch.device = "cpu") -> None:
        b = Blocks.of(specs)
        n = b.n
        self.blocks, self.n = b, n
        # ρ of the numeric noise: one number, or one per feature (F,) in schema order (sampling.calibrate_acf)
        self.rho: float | torch.Tensor = (float(rho) if np.ndim(rho) == 0 else
                                          torch.as_tensor(np.asarray(rho, dtype=np.float32).reshape(n),
                                                          device=torch.device(device)))
        self.mask_mode, self.binary_mode, self.numeric_mode = mask_mode, binary_mode, numeric_mode
        num = np.zeros(n, dtype=bool)
        num[list(b.num)] = True
        scale = np.where(num, np.asarray(columns.scale, dtype=np.float64), 0.0)
        shift = np.where(num, np.asarray(columns.shift, dtype=np.float64), 0.0)
        origin = np.asarray(columns.origin, dtype=np.float64)
        log = num & np.isfinite(origin)
        bias = np.zeros(n) if mask_bias is None else np.asarray(mask_bias, dtype=np.float64).reshape(n)
        gain = np.ones(n) if mask_scale is None else np.asarray(mask_scale, dtype=np.float64).reshape(n)
        # Column maps (idx, a, c) per sampling head: column k = a_k · out[..., idx_k] + c_k (block layout out).
        col = np.zeros(n, np.int64)
        col[list(b.num)] = np.arange(len(b.num))                     # numeric feature → its μ / log σ² column
        mask_col = np.empty(n, np.int64)
        mask_col[b.order] = b.s_mask.start + np.arange(n)
        rest = np.arange(b.s_bin.start, b.s_cat.stop)                # binary then categorical logits (schema order)
        self.maps = [(col, scale, shift), (mask_col, gain, bias),
                     (b.s_logvar.start + col, np.where(num, 0.5, 0.0), np.zeros(n)),
                     (rest, np.ones(len(rest)), np.zeros(len(rest)))]
        dev = torch.device(device)
        f32 = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=dev)  # noqa: E731
        self._maps = [(torch.as_tensor(i, device=dev), f32(a), f32(c)) for i, a, c in self.maps]
        self.mask_chol_t = None if mask_corr is None else cholesky_t(np.asarray(mask_corr).reshape(n, n), dev)
        self.intensity = intensity
        h = np.zeros(n) if repeat_prob is None else np.asarray(repeat_prob, dtype=np.float64).reshape(n)
        rep = np.flatnonzero(num & (h > 0))                          # numeric features that repeat values
        self.repeat = (torch.as_tensor(rep, device=dev), f32(h[rep])) if rep.size else None
        self._intensity = None if intensity is None else intensity.tensors(dev)
        self.sd_scale = f32(scale)                                  # (F,) s, 0 for non-numeric features
        self.origin = f32(np.where(log, origin, 0.0))
        self.log_runs = _runs(log)
        self.lo = f32([s.valid_min for s in specs])
        self.hi = f32([s.valid_max for s in specs])
        # within-stay scales λ_f (sampling.calibrate_within): only the numeric features with λ_f ≠ 1 are touched
        lam = np.ones(n) if within_scale is None else np.asarray(within_scale, dtype=np.float64).reshape(n)
        touch = np.flatnonzero(num & (lam != 1.0))
        self.within = (torch.as_tensor(touch, device=dev), f32(lam[touch]), f32(self.lo.cpu().numpy()[touch]),
                       f32(self.hi.cpu().numpy()[touch])) if touch.size else None
        q = np.zeros(n) if quantum is None else np.asarray(quantum, dtype=np.float64).reshape(n)
        grid = np.flatnonzero(num & (q > 0))                         # numeric features with a recording grid
        self.grid = None
        if grid.size == num.sum() and grid.size:  # all of them: round every column, binary and categorical codes
            inv = np.where(num, grid_scale(np.where(num, q, 1.0)), 1.0)  # on the grid 1 (integers: unchanged)
            self.grid = (None, f32(inv), self.lo, self.hi)
        elif grid.size:
            self.grid = (torch.as_tensor(grid, device=dev), f32(grid_scale(q[grid])),
                         f32(self.lo.cpu().numpy()[grid]), f32(self.hi.cpu().numpy()[grid]))
        pmf = np.ones((n, 1)) if count_pmf is None else np.asarray(count_pmf, dtype=np.float64).reshape(n, -1)
        # pmf (F, K): P(count = k + 1 | observed); None: every observed bin has one measurement
        cdf = np.cumsum(pmf, axis=1)
        cdf /= np.maximum(cdf[:, -1:], 1e-12)
        keep = max(int((cdf < 1.0 - 1e-9).sum(1).max()) + 1, 1)       # trim the all-zero tail
        thr = 1.0 - np.concatenate([np.zeros((n, 1)), cdf[:, :keep - 1]], axis=1)  # (F, K') 1 − C_{j−1}
        self.thresholds = f32(thr.T.copy())                        # (K', F), row 0 is 1
        self.thresholds_asc = f32(thr[:, ::-1].copy())              # (F, K') ascending, for the binary search

    # ---- the sampling heads -----------------------------------------------------------------------------------
    def apply_map(self, out: torch.Tensor) -> list[torch.Tensor]:
        """Block-layout head outputs (..., out_width) → the four sampling heads (a gather; prefer
        ``fold_linear`` when the heads come from a linear layer)."""
        return [torch.addcmul(c, out.index_select(-1, i), a) for i, a, c in self._maps]

    def fold_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A linear head (weight (out_width, H), bias (out_width,)) → the four sampling heads as linear layers."""
        w64, b64 = weight.detach().double().cpu().numpy(), bias.detach().double().cpu().numpy()
        as_t = lambda x: torch.as_tensor(x, dtype=weight.dtype, device=weight.device)  # noqa: E731
        return [(as_t(w64[i] * a[:, None]), as_t(b64[i] * a + c)) for i, a, c in self.maps]

    # ---- the draw ---------------------------------------------------------------------------------------------
    def _repeat(self, values: torch.Tensor, generator: torch.Generator | None) -> None:
        """values (B, T, F), NaN where unobserved, in place: each observed cell of a repeating feature after the
        stay's first observation is, with probability h_f, a copy of the previous observed value. A copy of a
        copy is the last cell that was not copied (the anchor), so runs of repeats hold one value."""
        cols, h = self.repeat
        v = values.index_select(-1, cols)                               # (B, T, F') NaN where unobserved
        obs = v.isfinite()
        t = torch.arange(v.shape[1], dtype=torch.int32, device=v.device).view(1, -1, 1)
        has_prev = obs.cumsum(1, dtype=torch.int32) > obs               # an observed bin before t
        copy = obs & has_prev & (torch.rand(v.shape, generator=generator, device=v.device) < h)
        keep = obs & ~copy
        anchor = (t * keep - (~keep).to(torch.int32)).cummax(1).values  # last observed, not copied bin ≤ t
        held = v.gather(1, anchor.clamp_(min=0).long())
        values.index_copy_(-1, cols, torch.where(copy, held, v))       # int32 and index_copy_: 40 % faster

    def stay_shift(self, logit: torch.Tensor) -> torch.Tensor:
        """Calibrated mask logits (B, T, F) → the same with each stay's intensity map applied (in place;
        sampling.calibrate_intensity, fedehr.models.stay_intensity); unchanged without a map."""
        return logit if self._intensity is None else apply_intensity(logit, *self._intensity)

    def draw(self, heads: list[torch.Tensor], *, generator: torch.Generator | None, values: torch.Tensor,
             counts: torch.Tensor, presence: torch.Tensor | None = None) -> None:
        """The four sampling heads (contiguous, B × T leading; overwritten, used as scratch) → ``values``
        (B, T, F) float32, NaN where unobserved, and ``counts`` (B, T, F) (any integer dtype), written in place.

        ``presence`` (B, F) bool (the TCVAE's per-stay presence draws, tcvae.presence): a stay never observes an
        absent feature, and observes a present one at least once: when no hour was drawn, the hour with the
        smallest u / p (the likeliest relative to its uniform; with threshold masks the largest p) is observed,
        with a fresh uniform for its count.
        """
        g, logit, half_lv, discrete = heads
        dev = g.device
        if self.numeric_mode == "sample" and self.blocks.num:
            sd = half_lv.clamp_(0.5 * LOGVAR_MIN, 0.5 * LOGVAR_MAX).exp_().mul_(self.sd_scale)  # s·σ
            eps = ar1_noise(tuple(g.shape), self.rho, generator=generator, device=dev)
            torch.addcmul(g, sd, eps, out=values)
        else:
            values.copy_(g)
        for a, b in self.log_runs:  # x = exp(g) + a on the log scale's features (overflow → inf, clipped below)
            values[..., a:b].exp_().add_(self.origin[a:b])
        bl = self.blocks
        if bl.bin:
            vb = draw_bernoulli(torch.sigmoid(discrete[..., :len(bl.bin)]), self.binary_mode, generator)
            for j, f in enumerate(bl.bin):  # loop over binary features (few)
                values[..., f].copy_(vb[..., j])
        k = len(bl.bin)
        for f, c in zip(bl.cat, bl.cat_sizes, strict=True):  # loop over categorical features (few)
            logits = discrete[..., k:k + c]
            if self.binary_mode == "threshold":
                code = logits.argmax(-1)
            else:  # Gumbel-max draw
                u = torch.rand(logits.shape, generator=generator, device=dev).clamp_(1e-12, 1.0)
                code = (logits - torch.log(-torch.log(u))).argmax(-1)
            values[..., f].copy_(code)
            k += c
        values.clamp_(self.lo, self.hi)
        # Mask and counts from one uniform per cell (see the class docstring).
        p = self.stay_shift(logit).sigmoid_()
        w = (torch.rand(p.shape, generator=generator, device=dev) if self.mask_chol_t is None
             else correlated_uniforms(tuple(p.shape), self.mask_chol_t, generator=generator))
        if self.mask_mode == "threshold":  # observed ⟺ p > ½; w stays U(0, 1) there for the count
            w = torch.where(p <= 0.5, 2.0 - p, w)  # > 1 (unobserved), smallest at the likeliest hour
        else:
            w.div_(p)
        if presence is not None:
            w.masked_fill_(~presence[:, None, :], 2.0)              # absent in this stay: never observed
            w_min, hour = w.min(1)                                  # (B, F) each
            forced = presence & ~(w_min < 1.0)                      # present but no hour drawn
            if bool(forced.any()):
                b_i, f_i = forced.nonzero(as_tuple=True)
                w[b_i, hour[b_i, f_i], f_i] = torch.rand(b_i.shape, generator=generator, device=dev)
        obs = torch.lt(w, 1.0, out=p)                               # (B, T, F) 1.0 / 0.0 (p is no longer needed)
        values.div_(obs).mul_(obs)                                  # x·1/1 = x exactly; x/0·0 = NaN
        if self.within is not None:                                 # x ← x̄ + λ (x − x̄) over observed bins
            cols, lam, lo, hi = self.within
            v = values.index_select(-1, cols)                       # (B, T, F') NaN where unobserved
            m = v.nansum(1, keepdim=True).div_(v.isfinite().sum(1, keepdim=True).clamp_(min=1))
            values[..., cols] = v.sub_(m).mul_(lam).add_(m).clamp_(lo, hi)
        thr = self.thresholds
        if thr.shape[0] <= self.COMPARE_MAX:
            tmp = half_lv                                           # scratch (B, T, F)
            for j in range(1, thr.shape[0]):
                obs.add_(torch.lt(w, thr[j], out=tmp))
            counts.copy_(obs)
            k = obs                                                 # (B, T, F) float counts (scratch from here)
        else:  # binary search per feature: count = K − #{j: threshold_j ≤ w}
            b = w.shape[0]
            wf = w.nan_to_num(nan=2.0).permute(2, 0, 1).reshape(self.n, -1)  # (F, B·T); 0/0 → unobserved
            kk = thr.shape[0] - torch.searchsorted(self.thresholds_asc, wf.contiguous(), right=True)
            counts.copy_(kk.reshape(self.n, b, -1).permute(1, 2, 0))
            k = None
        if self.grid is not None:                                   # x ← round(x·k/q) / (k/q), k = max(count, 1)
            cols, inv_q, lo, hi = self.grid
            k = counts.to(torch.float32) if k is None else k
            if cols is None:                                        # every column, in place
                s = k.clamp_(min=1.0).mul_(inv_q)                   # (B, T, F) k / q
                values.mul_(s).round_().div_(s).clamp_(lo, hi)
            else:
                s = k.index_select(-1, cols).clamp_(min=1.0).mul_(inv_q)  # (B, T, F') k / q
                values[..., cols] = values.index_select(-1, cols).mul_(s).round_().div_(s).clamp_(lo, hi)
        if self.repeat is not None:  # last: a copy carries its anchor's final (rounded) value exactly
            self._repeat(values, generator)
