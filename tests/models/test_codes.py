"""EHRDiff code-matrix mode: ICD-9 truncation, MIMIC-III / eICU matrices, and the code-matrix metrics."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared_data
from fedehr.errors import InputError
from fedehr.models.diffusion import codes


def test_truncate_icd9() -> None:
    got = codes.truncate_icd9(pd.Series(["40391", "V5861", "E8791", "518.81", "E980.2", "0389", " v103 "]))
    assert got.tolist() == ["403", "V58", "E879", "518", "E980", "038", "V10"]


def _write(path: Path, text: str) -> Path:
    with gzip.open(path, "wt") as f:
        f.write(text)
    return path


MIMIC = """row_id,subject_id,hadm_id,seq_num,icd9_code
1,10,100,1,"40391"
2,10,100,2,"E8791"
3,10,101,1,"40390"
4,11,102,1,"V5861"
5,11,102,2,
6,12,103,1,"99591"
"""


def test_mimic_code_matrix_units(tmp_path: Path) -> None:
    path = _write(tmp_path / "DIAGNOSES_ICD.csv.gz", MIMIC)
    by_subject = codes.mimic3_code_matrix(path)
    assert by_subject.unit == "subject" and by_subject.codes == ("403", "995", "E879", "V58")
    assert by_subject.row_ids.tolist() == [10, 11, 12]
    np.testing.assert_array_equal(by_subject.x, [[1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]])
    assert by_subject.dropped == 1  # the empty code
    by_adm = codes.mimic3_code_matrix(tmp_path, unit="admission")  # the folder works too
    assert by_adm.row_ids.tolist() == [100, 101, 102, 103] and by_adm.shape == (4, 4)
    np.testing.assert_array_equal(by_adm.x[1], [1, 0, 0, 0])
    fixed = codes.mimic3_code_matrix(path, vocabulary=("V58", "403"))
    np.testing.assert_array_equal(fixed.x, [[0, 1], [1, 0], [0, 0]])
    assert fixed.dropped == 1 + 2  # the empty code, then E879 and 995 outside the vocabulary
    with pytest.raises(InputError):
        codes.mimic3_code_matrix(path, unit="visit")  # type: ignore[arg-type]


def test_mimic_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        codes.mimic3_code_matrix(tmp_path / "nope.csv.gz")
    bad = _write(tmp_path / "bad.csv.gz", "row_id,hadm_id,icd9_code\n1,2,\"4019\"\n")
    with pytest.raises(InputError, match="subject_id"):
        codes.mimic3_code_matrix(bad)
    bad_id = _write(tmp_path / "bad_id.csv.gz", "subject_id,hadm_id,icd9_code\n1,2,4019\nx,3,4019\n")
    with pytest.raises(InputError) as err:
        codes.mimic3_code_matrix(bad_id)
    assert err.value.line == 3


EICU = """diagnosisid,patientunitstayid,diagnosisstring,icd9code
1,500,a,"401.9, I10"
2,500,b,"E980.2, 965.00, T40.60"
3,501,c,"E87.2"
4,501,d,
5,502,e,"V45.81"
6,502,f,"518.81, J96.0"
"""


def test_eicu_code_matrix_keeps_icd9_only(tmp_path: Path) -> None:
    m = codes.eicu_code_matrix(_write(tmp_path / "diagnosis.csv.gz", EICU))
    assert m.unit == "stay" and m.row_ids.tolist() == [500, 501, 502]
    assert m.codes == ("401", "518", "965", "E980", "V45")
    np.testing.assert_array_equal(m.x, [[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 1]])
    assert m.dropped == 4  # I10, T40.60, E87.2 (ICD-10), J96.0


def test_metrics_on_identical_matrices() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((200, 12)) < rng.random(12)).astype(np.float32)
    assert codes.prevalence_pearson(x, x) == pytest.approx(1.0)
    assert codes.cmd_pearson(x, x) == 0.0
    assert codes.cmd_cov(x, x) == 0.0
    assert codes.prevalence_pearson(x, x[::-1]) == pytest.approx(1.0)  # row order does not matter
    y = (rng.random((200, 12)) < 0.3).astype(np.float32)
    assert codes.cmd_pearson(x, y) == pytest.approx(codes.cmd_pearson(y, x))
    assert codes.cmd_pearson(x, y) > 0 and codes.cmd_cov(x, y) > 0


def test_nonzero_columns_and_prevalence() -> None:
    s = np.array([[1, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0]])
    assert codes.nonzero_columns(s) == 2
    np.testing.assert_allclose(codes.prevalence(s), [2 / 3, 0, 0, 2 / 3])
    assert np.isnan(codes.prevalence_pearson(s, np.ones((3, 4))))  # constant prevalences: r undefined


def test_cmd_hand_computed() -> None:
    """Perfectly correlated vs anti-correlated pair: |Δcorr| = (0 + 2 + 2 + 0)/4 = 1; cov-RMSE by hand."""
    real = np.array([[1, 1], [0, 0], [1, 1], [0, 0]], dtype=float)
    synth = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=float)
    assert codes.cmd_pearson(real, synth) == pytest.approx(1.0)
    # Centred Gram matrices: real [[1, 1], [1, 1]], synth [[1, −1], [−1, 1]] → RMSE sqrt((0 + 4 + 4 + 0)/4).
    assert codes.cmd_cov(real, synth) == pytest.approx(np.sqrt(2.0))
    with pytest.raises(InputError):
        codes.cmd_cov(real, synth[:3])
    with pytest.raises(InputError):
        codes.cmd_pearson(real, synth[:, :1])


def test_constant_columns_count_as_zero_correlation() -> None:
    real = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=float)
    synth = real.copy()
    synth[:, 1] = 0  # code 1 never generated: its correlations become 0 (4 of 9 entries differ by 1)
    assert codes.cmd_pearson(real, synth) == pytest.approx(3 / 9)


@pytest.mark.integration
def test_mimic3_demo_code_matrix() -> None:
    path = shared_data("mimic-iii-demo-1.4", "DIAGNOSES_ICD.csv.gz")
    m = codes.mimic3_code_matrix(path)
    print(f"MIMIC-III demo code matrix (subjects x ICD-9 3-digit codes): {m.shape}, dropped {m.dropped}")
    assert m.shape[0] == 100 and 200 < m.shape[1] < 1782
    assert set(np.unique(m.x)) <= {0.0, 1.0} and m.x.sum(axis=1).min() >= 1
    assert all(c.startswith("E") == (len(c) == 4) for c in m.codes)
    adm = codes.mimic3_code_matrix(path, unit="admission")
    print(f"MIMIC-III demo code matrix (admissions): {adm.shape}")
    assert adm.shape == (129, m.shape[1])
    assert codes.nonzero_columns(m.x) == m.shape[1]


@pytest.mark.integration
def test_eicu_demo_code_matrix() -> None:
    m = codes.eicu_code_matrix(shared_data("eicu-demo-2.0.1", "diagnosis.csv.gz"))
    print(f"eICU demo code matrix (stays x ICD-9 3-digit codes): {m.shape}, dropped {m.dropped}")
    assert m.shape[0] > 1000 and 100 < m.shape[1] < 1000
    assert not any(c[0].isalpha() and c[0] not in "EV" for c in m.codes)
