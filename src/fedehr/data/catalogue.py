"""Canonical ICU variables shared by all loaders: name, kind, unit and clinically valid range.

Names follow the PhysioNet/CinC 2012 challenge (widely known to ICU data scientists); variables that challenge
lacks (SpO2, haemoglobin, chloride, ...) are added in the same style. Ranges are physiological plausibility
limits used to drop recording errors, not reference ranges.
"""

from __future__ import annotations

import math

from fedehr.data.schema import FeatureSpec

_INF = math.inf

# name, kind, unit, valid_min, valid_max, description
_TEMPORAL: list[tuple[str, str, str, float, float, str]] = [
    ("HR", "numeric", "bpm", 0, 300, "heart rate"),
    ("SysABP", "numeric", "mmHg", 0, 300, "invasive systolic arterial blood pressure"),
    ("DiasABP", "numeric", "mmHg", 0, 250, "invasive diastolic arterial blood pressure"),
    ("MAP", "numeric", "mmHg", 0, 300, "invasive mean arterial blood pressure"),
    ("NISysABP", "numeric", "mmHg", 0, 300, "non-invasive systolic arterial blood pressure"),
    ("NIDiasABP", "numeric", "mmHg", 0, 250, "non-invasive diastolic arterial blood pressure"),
    ("NIMAP", "numeric", "mmHg", 0, 300, "non-invasive mean arterial blood pressure"),
    ("RespRate", "numeric", "breaths/min", 0, 100, "respiration rate"),
    ("Temp", "numeric", "degC", 14, 45, "body temperature"),
    ("SaO2", "numeric", "%", 0, 100, "arterial O2 saturation (blood gas)"),
    ("SpO2", "numeric", "%", 0, 100, "peripheral O2 saturation (pulse oximetry)"),
    ("FiO2", "numeric", "fraction", 0.21, 1.0, "fraction of inspired O2"),
    ("GCS", "numeric", "points", 3, 15, "Glasgow coma score"),
    ("Urine", "numeric", "mL", 0, 10000, "urine output"),
    ("Weight", "numeric", "kg", 1, 400, "body weight"),
    ("MechVent", "binary", "", 0, 1, "mechanical ventilation respiration"),
    ("Albumin", "numeric", "g/dL", 0.5, 8, "albumin"),
    ("ALP", "numeric", "IU/L", 0, 5000, "alkaline phosphatase"),
    ("ALT", "numeric", "IU/L", 0, 20000, "alanine transaminase"),
    ("AST", "numeric", "IU/L", 0, 30000, "aspartate transaminase"),
    ("Bilirubin", "numeric", "mg/dL", 0, 80, "total bilirubin"),
    ("BUN", "numeric", "mg/dL", 0, 300, "blood urea nitrogen"),
    ("Cholesterol", "numeric", "mg/dL", 0, 1000, "cholesterol"),
    ("Creatinine", "numeric", "mg/dL", 0, 40, "serum creatinine"),
    ("Glucose", "numeric", "mg/dL", 0, 2000, "serum glucose"),
    ("HCO3", "numeric", "mmol/L", 0, 80, "serum bicarbonate"),
    ("HCT", "numeric", "%", 0, 80, "haematocrit"),
    ("Hgb", "numeric", "g/dL", 0, 25, "haemoglobin"),
    ("K", "numeric", "mEq/L", 0.5, 15, "serum potassium"),
    ("Na", "numeric", "mEq/L", 80, 200, "serum sodium"),
    ("Cl", "numeric", "mEq/L", 50, 200, "serum chloride"),
    ("Ca", "numeric", "mg/dL", 0, 20, "serum calcium"),
    ("Mg", "numeric", "mmol/L", 0, 10, "serum magnesium"),
    ("Lactate", "numeric", "mmol/L", 0, 40, "lactate"),
    ("PaCO2", "numeric", "mmHg", 0, 200, "partial pressure of arterial CO2"),
    ("PaO2", "numeric", "mmHg", 0, 800, "partial pressure of arterial O2"),
    ("pH", "numeric", "", 6.3, 8.0, "arterial pH"),
    ("Platelets", "numeric", "1000/uL", 0, 2000, "platelets"),
    ("TroponinI", "numeric", "ug/L", 0, 100, "troponin-I"),
    ("TroponinT", "numeric", "ug/L", 0, 100, "troponin-T"),
    ("WBC", "numeric", "1000/uL", 0, 500, "white blood cell count"),
    ("INR", "numeric", "", 0.2, 20, "international normalised ratio"),
    ("PTT", "numeric", "s", 5, 250, "partial thromboplastin time"),
]

_STATIC: list[tuple[str, str, str, float, float, str]] = [
    ("Age", "numeric", "years", 0, 120, "age at ICU admission (de-identified sources cap it, e.g. 90)"),
    ("Gender", "binary", "", 0, 1, "1 = male, 0 = female"),
    ("Height", "numeric", "cm", 50, 250, "height at admission"),
    ("Weight", "numeric", "kg", 1, 400, "weight at admission"),
]

TEMPORAL: dict[str, FeatureSpec] = {
    n: FeatureSpec(n, k, u, float(lo), float(hi), description=d)  # type: ignore[arg-type]
    for n, k, u, lo, hi, d in _TEMPORAL
}
STATIC: dict[str, FeatureSpec] = {
    n: FeatureSpec(n, k, u, float(lo), float(hi), description=d)  # type: ignore[arg-type]
    for n, k, u, lo, hi, d in _STATIC
}
# PhysioNet 2012 ICU type; stored as integer codes 0-3 for the challenge's ICUType 1-4.
STATIC["ICUType"] = FeatureSpec(
    "ICUType", "categorical",
    categories=("Coronary Care Unit", "Cardiac Surgery Recovery Unit", "Medical ICU", "Surgical ICU"),
    description="ICU type at admission (PhysioNet 2012 ICUType 1-4 = codes 0-3)")


def temporal_specs(names: list[str] | tuple[str, ...]) -> tuple[FeatureSpec, ...]:
    """Canonical specs for ``names`` in that order (KeyError names the unknown variable)."""
    return tuple(TEMPORAL[n] for n in names)


def static_specs(names: list[str] | tuple[str, ...]) -> tuple[FeatureSpec, ...]:
    return tuple(STATIC[n] for n in names)


def fahrenheit_to_celsius(x):
    return (x - 32.0) * (5.0 / 9.0)


def inches_to_cm(x):
    return x * 2.54


def pounds_to_kg(x):
    return x * 0.45359237
