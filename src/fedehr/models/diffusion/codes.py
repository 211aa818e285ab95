"""EHRDiff's ``codes`` data mode: binary row × ICD-9 code matrices, and the paper's code-matrix metrics.

Codes are reduced as in EHRDiff's MIMIC-III preprocessing: ICD-9 diagnoses truncated to 3 characters, except
E-codes (external causes), which keep 4 (``E8791`` → ``E879``; ``V5861`` → ``V58``; ``40391`` → ``403``).

Sources:

* MIMIC-III ``DIAGNOSES_ICD`` (column ``icd9_code`` without dots): one row per subject (``unit="subject"``,
  the default — the paper's 46,520 rows match the MIMIC-III patient count) or per admission
  (``unit="admission"``, ``hadm_id``).
* eICU ``diagnosis`` (``icd9code``: comma-separated, with dots, usually an ICD-9 code followed by its ICD-10
  equivalent, e.g. ``"518.81, J96.0"``): one row per ICU stay (``patientunitstayid``). A token is kept as ICD-9
  when it reads ``ddd[.d[d]]``, ``Vdd[.d[d]]`` or ``Eddd[.d]``; everything else (ICD-10 such as ``I10``,
  ``E87.2``, ``R65.20``) is dropped. ICD-10 external-cause codes ``Vdd.…`` with digits only are
  indistinguishable from ICD-9 V-codes and would be kept; in practice they carry letters (``V43.52XA``).

Metrics (pure numpy, rows = stays, columns = codes; real and synthetic matrices share the columns):
prevalence Pearson r, NZC (non-zero columns of the synthetic matrix) and two correlation-matrix distances —
``cmd_pearson`` = mean |Corr(X_r) − Corr(X_s)| over all column pairs (bounded by 2), and ``cmd_cov`` =
sqrt(mean((X̃_rᵀX̃_r − X̃_sᵀX̃_s)²)) of the unscaled column-centred co-occurrence (equal row counts required;
the scale that the EHRDiff CMD of 7.77 reported on MIMIC-III suggests, see docs/diffusion.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fedehr.errors import InputError

_MIMIC_ICD9 = r"^(?:\d{3,5}|V\d{2,4}|E\d{3,4})$"
_EICU_ICD9 = r"^(?:\d{3}(?:\.\d{1,2})?|V\d{2}(?:\.\d{1,2})?|E\d{3}(?:\.\d)?)$"


@dataclass(frozen=True, eq=False)
class CodeMatrix:
    """Binary matrix x (N, V) float32 with the row ids (N,) int64, the codes (V,) and what a row is."""

    x: np.ndarray
    row_ids: np.ndarray
    codes: tuple[str, ...]
    unit: str
    dropped: int = 0  # code tokens that were not ICD-9 (or not in the given vocabulary)

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape  # type: ignore[return-value]


def truncate_icd9(codes: pd.Series) -> pd.Series:
    """ICD-9 codes without dots → 3 characters (4 for E-codes)."""
    c = codes.astype(str).str.strip().str.upper().str.replace(".", "", regex=False)
    return c.str[:3].where(~c.str.startswith("E"), c.str[:4])


def _matrix(rows: pd.Series, codes: pd.Series, unit: str, vocabulary: tuple[str, ...] | None,
            dropped: int, all_rows: np.ndarray | None = None) -> CodeMatrix:
    """Long (row, code) pairs → dense binary matrix (vectorised with pandas categoricals)."""
    if vocabulary is None:
        vocabulary = tuple(sorted(set(codes.tolist())))
    col = pd.Categorical(codes, categories=list(vocabulary))
    keep = col.codes >= 0
    dropped += int((~keep).sum())
    ids = np.unique(np.concatenate([rows.to_numpy(np.int64), [] if all_rows is None else all_rows]).astype(np.int64))
    r = np.searchsorted(ids, rows.to_numpy(np.int64)[keep])
    x = np.zeros((len(ids), len(vocabulary)), dtype=np.float32)
    x[r, col.codes[keep]] = 1.0
    return CodeMatrix(x, ids, tuple(vocabulary), unit, dropped)


def mimic3_code_matrix(path: str | Path, *, unit: Literal["subject", "admission"] = "subject",
                       vocabulary: tuple[str, ...] | None = None) -> CodeMatrix:
    """Rows = subjects (or admissions) of MIMIC-III ``DIAGNOSES_ICD.csv[.gz]`` (or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "DIAGNOSES_ICD.csv.gz" if (path / "DIAGNOSES_ICD.csv.gz").exists() else path / "DIAGNOSES_ICD.csv"
    if not path.is_file():
        raise InputError("MIMIC-III diagnoses table not found", file=path, expected="DIAGNOSES_ICD.csv[.gz]")
    if unit not in ("subject", "admission"):
        raise InputError("unknown row unit", field="unit", value=unit, expected="subject | admission")
    df = pd.read_csv(path, dtype=str)
    df.columns = [c.lower() for c in df.columns]
    key = "subject_id" if unit == "subject" else "hadm_id"
    for col in (key, "icd9_code"):
        if col not in df.columns:
            raise InputError("missing column", file=path, field=col, expected="MIMIC-III DIAGNOSES_ICD columns")
    rows = pd.to_numeric(df[key], errors="coerce")
    bad_rows = rows.isna()
    if bad_rows.any():
        line = int(np.flatnonzero(bad_rows.to_numpy())[0]) + 2
        raise InputError("row id is not an integer", file=path, line=line, field=key,
                         value=df[key].iloc[line - 2])
    all_rows = rows.to_numpy(np.int64)
    code = df["icd9_code"].fillna("").str.strip().str.upper()
    ok = code.str.match(_MIMIC_ICD9)
    return _matrix(rows[ok].astype(np.int64), truncate_icd9(code[ok]), unit, vocabulary, int((~ok).sum()),
                   all_rows=all_rows)


def eicu_code_matrix(path: str | Path, *, vocabulary: tuple[str, ...] | None = None) -> CodeMatrix:
    """Rows = ICU stays (``patientunitstayid``) of eICU ``diagnosis.csv[.gz]`` (or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "diagnosis.csv.gz" if (path / "diagnosis.csv.gz").exists() else path / "diagnosis.csv"
    if not path.is_file():
        raise InputError("eICU diagnosis table not found", file=path, expected="diagnosis.csv[.gz]")
    df = pd.read_csv(path, dtype=str)
    for col in ("patientunitstayid", "icd9code"):
        if col not in df.columns:
            raise InputError("missing column", file=path, field=col, expected="eICU diagnosis columns")
    rows = pd.to_numeric(df["patientunitstayid"], errors="coerce")
    if rows.isna().any():
        line = int(np.flatnonzero(rows.isna().to_numpy())[0]) + 2
        raise InputError("stay id is not an integer", file=path, line=line, field="patientunitstayid",
                         value=df["patientunitstayid"].iloc[line - 2])
    all_rows = rows.to_numpy(np.int64)
    tokens = df["icd9code"].fillna("").str.split(",").explode().str.strip().str.upper()
    tokens = tokens[tokens != ""]
    ok = tokens.str.match(_EICU_ICD9)
    kept = tokens[ok]
    return _matrix(rows.loc[kept.index].astype(np.int64), truncate_icd9(kept), "stay", vocabulary,
                   int((~ok).sum()), all_rows=all_rows)


# ---- metrics -------------------------------------------------------------------------------------------------
def _pair(real: np.ndarray, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real, synth = np.asarray(real, dtype=np.float64), np.asarray(synth, dtype=np.float64)
    if real.ndim != 2 or synth.ndim != 2 or real.shape[1] != synth.shape[1]:
        raise InputError("code matrices must be 2-D with the same columns", field="real/synth",
                         value=(real.shape, synth.shape), expected="(N_r, V) and (N_s, V)")
    if len(real) == 0 or len(synth) == 0:
        raise InputError("empty code matrix", field="real/synth", value=(real.shape, synth.shape))
    return real, synth


def prevalence(x: np.ndarray) -> np.ndarray:
    """(V,) share of rows holding each code."""
    return np.asarray(x, dtype=np.float64).mean(axis=0)


def prevalence_pearson(real: np.ndarray, synth: np.ndarray) -> float:
    """Pearson r between per-code prevalences (EHRDiff Fig. 1; higher is better, 1 = proportional).

    NaN when either prevalence vector is constant (r undefined).
    """
    real, synth = _pair(real, synth)
    p, q = prevalence(real), prevalence(synth)
    if p.std() == 0 or q.std() == 0:
        return float("nan")
    return float(np.corrcoef(p, q)[0, 1])


def nonzero_columns(synth: np.ndarray) -> int:
    """NZC: number of codes that occur at least once in the (synthetic) matrix (higher = less mode collapse)."""
    return int((np.asarray(synth) != 0).any(axis=0).sum())


def _corr(x: np.ndarray) -> np.ndarray:
    """(V, V) Pearson correlations; pairs involving a constant column are 0 (no co-variation to compare)."""
    xc = x - x.mean(axis=0)
    sd = np.sqrt((xc**2).mean(axis=0))
    cov = xc.T @ xc / len(x)
    denom = np.outer(sd, sd)
    return np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 0)


def cmd_pearson(real: np.ndarray, synth: np.ndarray) -> float:
    """Mean |Corr(X_r) − Corr(X_s)| over all V² entries (lower is better; 0 = identical correlations, <= 2)."""
    real, synth = _pair(real, synth)
    return float(np.abs(_corr(real) - _corr(synth)).mean())


def cmd_cov(real: np.ndarray, synth: np.ndarray) -> float:
    """sqrt(mean((X̃_rᵀX̃_r − X̃_sᵀX̃_s)²)), X̃ column-centred, unscaled (grows with N: equal row counts needed)."""
    real, synth = _pair(real, synth)
    if len(real) != len(synth):
        raise InputError("cmd_cov compares unscaled co-occurrence: the matrices need the same number of rows",
                         field="real/synth", value=(len(real), len(synth)), expected="equal N (subsample first)")
    rc, sc = real - real.mean(axis=0), synth - synth.mean(axis=0)
    return float(np.sqrt(((rc.T @ rc - sc.T @ sc) ** 2).mean()))
