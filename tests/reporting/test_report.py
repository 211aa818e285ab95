"""The HTML evaluation report: self-contained, tables before figures, valid embedded PNGs, atomic writes."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpimg

from conftest import make_tiny_cohort
from fedehr import __version__
from fedehr.data.catalogue import static_specs, temporal_specs
from fedehr.data.cohort import Cohort
from fedehr.data.schema import Schema
from fedehr.errors import InputError
from fedehr.reporting import html as report_html
from fedehr.reporting import plots, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class FakeEvaluation:
    """The shape of fedehr.evaluation.suite.Evaluation, with made-up numbers."""

    metrics: dict[str, Any]
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)


def fake_evaluation(n_syn: int, *, with_artifacts: bool = True) -> FakeEvaluation:
    rng = np.random.default_rng(3)
    fpr = np.linspace(0.0, 1.0, 11)
    artifacts = {
        "dcr_syn_to_train": rng.gamma(2.0, 1.0, n_syn), "dcr_syn_to_test": rng.gamma(2.3, 1.0, n_syn),
        "roc:tstr:logreg:fpr": fpr, "roc:tstr:logreg:tpr": np.sqrt(fpr),
        "roc:trtr:logreg:fpr": fpr, "roc:trtr:logreg:tpr": fpr**0.3,
    }
    summary = [
        {"name": "discriminative_gbm", "family": "fidelity", "value": 0.6234, "direction": "min", "best": 0.5,
         "threshold": 0.7, "passed": True, "description": "AUROC of a classifier separating real from synthetic."},
        {"name": "utility_logreg", "family": "utility", "value": -0.0712, "direction": "max", "best": 0.0,
         "threshold": -0.05, "passed": False, "description": "TSTR - TRTR AUROC with logistic regression."},
        {"name": "nndr", "family": "privacy", "value": 0.912, "direction": "max", "best": 1.0,
         "threshold": None, "passed": None, "description": "Nearest/second-nearest distance ratio."},
    ]

    def util(gap: float, tstr: float, trtr: float) -> dict[str, Any]:
        return {"value": gap, "n": 10, "tstr": {"auroc": tstr, "auroc_ci": [0.1, 0.9]}, "trtr": {"auroc": trtr}}

    # The structure fedehr.evaluation.suite.evaluate produces: {family: {metric: {"value": ..., details}}}.
    return FakeEvaluation(
        metrics={
            "summary": summary,
            "pooled": {"fidelity": {"discriminative_gbm": {"value": 0.6234}},
                       "utility": {"utility_logreg": {"value": -0.0712, "pooled": {"tstr": {"auroc": 0.7},
                                                                                    "trtr": {"auroc": 0.7712}}}},
                       "privacy": {"nndr": {"value": 0.912, "reference_test": 0.95}}},
            "per_site": {
                "site0": {"n_train": 20, "n_test": 10, "fidelity": {"discriminative_gbm": {"value": 0.61}},
                          "utility": {"utility_logreg": util(-0.05, 0.7, 0.75)},
                          "privacy": {"nndr": {"value": 0.9}}},
                "site1": {"n_train": 20, "n_test": 10, "fidelity": {"discriminative_gbm": {"value": 0.655}},
                          "utility": {"utility_logreg": util(-0.1, 0.62, 0.72)},
                          "privacy": {"nndr": {"value": None, "skipped": "needs >= 2 real training stays"}}},
                "site2": {"skipped": "fewer than 10 real train or test stays at this site", "n_train": 3,
                          "n_test": 1},
            },
            "per_feature": {"HR": {"wasserstein": 0.11}, "MAP": {"wasserstein": 0.23}},
            "settings": {"fast": True, "seed": 0},
        },
        artifacts=artifacts if with_artifacts else {},
    )


@dataclass
class Cohorts:
    train: Cohort
    test: Cohort
    synthetic: Cohort


def make_cohorts() -> Cohorts:
    schema = Schema(temporal=temporal_specs(["HR", "MAP", "Temp", "Lactate", "MechVent"]),
                    static=static_specs(["Age", "Gender"]), hours=6, bin_hours=1, source="test")
    return Cohorts(make_tiny_cohort(schema, n=40, seed=0), make_tiny_cohort(schema, n=20, seed=1),
                   make_tiny_cohort(schema, n=40, seed=2))


@pytest.fixture
def cohorts() -> Cohorts:
    return make_cohorts()


RUN_INFO = {
    "method": "fedavg", "training_time_s": 93.0, "bytes_communicated": 12 * 1024 * 1024,
    "rounds": [{"round": 1, "loss": 1.25}, {"round": 2, "loss": 0.875}],
    "federated_evaluation": {"site0": {"disc_auroc": 0.58}, "site1": {"disc_auroc": 0.66}},
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One report with run information, shared by the read-only checks (rendering takes about a second)."""
    out = tmp_path_factory.mktemp("report") / "out" / "report.html"
    return out, render(out, make_cohorts(), run_info=RUN_INFO, title="My <b>run</b>")


def render(path: Path, c: Cohorts, evaluation: FakeEvaluation | None = None, **kw: Any) -> str:
    write_report(path, evaluation=evaluation or fake_evaluation(len(c.synthetic)), train=c.train, test=c.test,
                 synthetic=c.synthetic, **kw)
    return path.read_text(encoding="utf-8")


class Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(text: str) -> list[tuple[str, dict[str, str | None]]]:
    p = Tags()
    p.feed(text)
    return p.tags


def table_rows(text: str, table_id: str) -> list[list[str]]:
    """Cell texts of one table by id (tags stripped)."""
    m = re.search(rf'<table id="{table_id}">(.*?)</table>', text, re.S)
    assert m, f"table {table_id} missing"
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", m.group(1), re.S)
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)]
            for r in rows]


def test_report_is_one_self_contained_file(report: tuple[Path, str]) -> None:
    """One HTML file, no temp siblings, no external resource of any kind."""
    out, text = report
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    tags = parse(text)
    for tag, attrs in tags:
        for key in ("src", "href", "srcset", "data", "poster", "action"):
            v = attrs.get(key)
            if v is not None:
                assert v.startswith(("data:image/png;base64,", "#")), (tag, key, v[:80])
    assert not [t for t, a in tags if t in ("script", "link", "iframe", "object", "embed")]
    assert "http://" not in text and "https://" not in text
    assert "@import" not in text and "url(" not in text


def test_every_image_is_a_decodable_png(report: tuple[Path, str]) -> None:
    """Each <img> is a data: URI holding a PNG that decodes to a non-blank image."""
    text = report[1]
    imgs = [a for t, a in parse(text) if t == "img"]
    # histograms, trajectories, dimension scatter, correlation, missingness, embeddings, DCR, ROC
    assert len(imgs) == 8
    for a in imgs:
        assert a["alt"]
        raw = base64.b64decode(a["src"].split(",", 1)[1], validate=True)
        assert raw.startswith(PNG_MAGIC)
        pixels = mpimg.imread(io.BytesIO(raw), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.01  # not a blank canvas


def test_summary_comes_first_with_arrows_thresholds_and_badges(report: tuple[Path, str]) -> None:
    text = report[1]
    assert text.index('id="summary-table"') < text.index("<img")
    assert text.index('id="per-site-table"') < text.index("<img")
    rows = table_rows(text, "summary-table")
    assert rows[0] == ["metric", "family", "value", "better", "best possible", "threshold", "result"]
    assert rows[1] == ["discriminative_gbm", "fidelity", "0.6234", "↓ lower is better", "0.5", "≤ 0.7", "pass"]
    assert rows[2] == ["utility_logreg", "utility", "-0.0712", "↑ higher is better", "0", "≥ -0.05", "fail"]
    assert rows[3] == ["nndr", "privacy", "0.912", "↑ higher is better", "1", "—", "n/a"]
    assert "1 passed, 1 failed, 1 without a threshold" in text


def test_per_site_table_lists_every_site_and_metric(report: tuple[Path, str]) -> None:
    """Site facts first, then every metric's value per site and pooled, TSTR/TRTR AUROC, skip reasons."""
    rows = table_rows(report[1], "per-site-table")
    assert rows[0] == ["family", "metric", "site0", "site1", "site2", "pooled"]
    assert rows[1:] == [
        ["", "n_train", "20", "20", "3", "—"],
        ["", "n_test", "10", "10", "1", "—"],
        ["", "skipped", "—", "—", "skipped [1]", "—"],
        ["fidelity", "discriminative_gbm", "0.61", "0.655", "—", "0.6234"],
        ["utility", "utility_logreg", "-0.05", "-0.1", "—", "-0.0712"],
        ["utility", "utility_logreg · tstr AUROC", "0.7", "0.62", "—", "0.7"],
        ["utility", "utility_logreg · trtr AUROC", "0.75", "0.72", "—", "0.7712"],
        ["privacy", "nndr", "0.9", "skipped [2]", "—", "0.912"],
    ]
    notes = re.search(r'<ol class="notes muted">(.*?)</ol>', report[1], re.S)
    assert notes and re.findall(r"<li>(.*?)</li>", notes.group(1)) == [
        "skipped: fewer than 10 real train or test stays at this site",
        "skipped: needs &gt;= 2 real training stays"]


def test_run_info_and_federated_evaluation_are_shown(report: tuple[Path, str]) -> None:
    text = report[1]
    run = dict(map(tuple, table_rows(text, "run-table")))
    assert run == {"method": "fedavg", "training time": "93.0 s (1.6 min)", "bytes communicated": "12.00 MiB"}
    assert table_rows(text, "rounds-table") == [["round", "loss"], ["1", "1.25"], ["2", "0.875"]]
    assert table_rows(text, "federated-table") == [["family", "metric", "site0", "site1"],
                                                   ["", "disc_auroc", "0.58", "0.66"]]


def test_definitions_link_from_summary_and_marking(report: tuple[Path, str]) -> None:
    text = report[1]
    assert '<a href="#def-utility_logreg">utility_logreg</a>' in text
    assert re.search(r'<dt id="def-utility_logreg">.*?</dt>\s*<dd>TSTR - TRTR AUROC', text, re.S)
    assert f"synthetic data evaluation — generated by fedehr {__version__}" in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text)
    assert "My &lt;b&gt;run&lt;/b&gt;" in text and "<b>run</b>" not in text  # autoescaped


def test_optional_parts_are_announced_or_omitted(tmp_path: Path, cohorts: Cohorts) -> None:
    """Without artefacts the DCR/ROC figures are replaced by a notice; without run_info no run tables."""
    text = render(tmp_path / "r.html", cohorts, evaluation=fake_evaluation(40, with_artifacts=False))
    assert text.count("<img") == 6
    assert 'id="run-table"' not in text and 'id="federated-table"' not in text
    assert "Not shown — DCR histogram" in text and "Not shown — ROC curves" in text


def test_failed_write_leaves_no_file(tmp_path: Path, cohorts: Cohorts, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure half-way through writing leaves neither a report nor a temporary file behind."""
    real_chunks = report_html.render_chunks

    def broken(ctx: dict[str, Any]):
        gen = real_chunks(ctx)
        yield next(gen)
        raise OSError("disk full")

    monkeypatch.setattr(report_html, "render_chunks", broken)
    out = tmp_path / "r.html"
    with pytest.raises(OSError, match="disk full"):
        render(out, cohorts)
    assert list(tmp_path.iterdir()) == []
    out.write_text("previous report")
    with pytest.raises(OSError, match="disk full"):
        render(out, cohorts)
    assert out.read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_bad_inputs_raise_input_errors(tmp_path: Path, cohorts: Cohorts) -> None:
    other = replace(cohorts.train.schema, hours=12)
    with pytest.raises(InputError, match="synthetic cohort does not match"):
        render(tmp_path / "a.html", replace(cohorts, synthetic=make_tiny_cohort(other, n=10)))
    ev = fake_evaluation(40)
    ev.metrics["summary"][0]["direction"] = "lower"
    with pytest.raises(InputError, match="direction"):
        render(tmp_path / "b.html", cohorts, evaluation=ev)
    ev = fake_evaluation(40)
    ev.artifacts["roc:tstr:gbm:fpr"] = np.linspace(0, 1, 5)  # no matching tpr
    with pytest.raises(InputError, match="roc:tstr:gbm"):
        render(tmp_path / "c.html", cohorts, evaluation=ev)
    assert list(tmp_path.iterdir()) == []


def test_nan_quantiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4, 3))
    x[rng.random(x.shape) < 0.4] = np.nan
    x[:, 0, 0] = np.nan  # a cell never observed
    got = plots.nan_quantiles(x, (0.25, 0.75))
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        want = np.nanquantile(x, [0.25, 0.75], axis=0)
    np.testing.assert_allclose(got, want, equal_nan=True)
    assert np.isnan(got[:, 0, 0]).all()


def test_pairwise_corr_matches_pairwise_complete_pearson() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    x[:, 1] += x[:, 0]
    x[rng.random(x.shape) < 0.3] = np.nan
    got = plots.pairwise_corr(x)
    for i in range(4):
        for j in range(4):
            ok = np.isfinite(x[:, i]) & np.isfinite(x[:, j])
            assert got[i, j] == pytest.approx(np.corrcoef(x[ok, i], x[ok, j])[0, 1], abs=1e-9)
    assert got[0, 1] > 0.5


def test_stay_means_ignore_missing_bins() -> None:
    v = np.array([[[1.0, np.nan], [3.0, np.nan]], [[np.nan, 2.0], [np.nan, 4.0]]])  # (N=2, T=2, F=2)
    np.testing.assert_array_equal(plots.stay_means(v), [[2.0, np.nan], [np.nan, 3.0]])


def test_report_of_a_real_evaluation(tmp_path: Path, cohorts: Cohorts) -> None:
    """End to end with fedehr.evaluation: every headline metric, every site and the artefact figures appear."""
    from threadpoolctl import threadpool_limits

    from fedehr.evaluation.suite import evaluate  # imported here: the other tests need only the report

    c = cohorts
    # One OpenMP thread: on a busy 2-core box threaded gradient boosting on 40 stays took 24 s instead of 0.4 s.
    with threadpool_limits(limits=1):
        ev = evaluate(c.train, c.test, c.synthetic, seed=0, fast=True)
    text = render(tmp_path / "r.html", c, evaluation=ev)
    names = [r[0] for r in table_rows(text, "summary-table")[1:]]
    assert names == [r["name"] for r in ev.metrics["summary"]]
    assert table_rows(text, "per-site-table")[0] == ["family", "metric", "site0", "site1", "pooled"]
    assert text.count("<img") == 8 and "Not shown" not in text
    assert 'id="fig-dcr"' in text and 'id="fig-roc"' in text
    pairs = ev.metrics["pooled"]["fidelity"]["coobservation_gap"]["worst_pairs"]
    rows = table_rows(text, "coobservation-table")
    assert rows[0] == ["pair", "real", "synthetic"] and len(rows) == 1 + len(pairs) > 1
    assert rows[1][0] == pairs[0]["pair"]
    pairs = ev.metrics["pooled"]["fidelity"]["intensity_correlation_gap"]["worst_pairs"]
    rows = table_rows(text, "intensity-table")
    assert rows[0] == ["pair", "real", "synthetic"] and len(rows) == 1 + len(pairs) > 1
    assert rows[1][0] == pairs[0]["pair"]


def test_degenerate_cohorts_render_with_notices(tmp_path: Path, cohorts: Cohorts) -> None:
    """Three real stays and a feature the generator never produces: the report still renders, and says why the
    embedding is missing."""
    syn = cohorts.synthetic
    values, counts = syn.values.copy(), syn.counts.copy()
    values[:, :, 0], counts[:, :, 0] = np.nan, 0  # HR never observed in the synthetic data
    c = Cohorts(cohorts.train.subset(np.arange(3)), cohorts.test, replace(syn, values=values, counts=counts))
    text = render(tmp_path / "r.html", c)
    assert "Not shown — PCA/t-SNE: needs at least 5 stays" in text
    assert text.count("<img") == 7
