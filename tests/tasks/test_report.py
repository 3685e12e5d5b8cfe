"""The HTML report: from a real retrain's store, with and without monitoring data, hostile strings escaped."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import html
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from nightcast.flows.report import report_flow
from nightcast.flows.retrain import retrain_flow
from nightcast.tasks.ops.report import (NO_MONITORING, SECTIONS, ReportError, gather_report, read_monitoring, render_report,
                          report_keys, write_report)
from nightcast.tasks.ops.storage import open_store, safe_key_part
from tests.conftest import fast_params

pytestmark = pytest.mark.usefixtures("prefect_harness")

HOSTILE_SID = '<script>alert("sid")</script>&x'
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
NOW = dt.datetime(2026, 9, 20, 6, 30, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_raw, prefect_harness) -> tuple[Path, dict]:
    """A store after one real retrain, on data where one series id is markup."""
    root = tmp_path_factory.mktemp("report")
    first = sample_raw["series_id"].unique().sort()[0]
    csv = root / "in.csv"
    sample_raw.with_columns(pl.col("series_id").replace({first: HOSTILE_SID})).write_csv(csv)
    out = retrain_flow(fast_params(str(csv)), store=str(root / "store"))
    return root / "store", out


@pytest.fixture()
def store(trained, tmp_path):
    """A private copy of the trained store: each test may add to it."""
    shutil.copytree(trained[0], tmp_path / "store")
    return open_store(str(tmp_path / "store"))


def _page(store, name: str = "lstm", day: dt.date = NOW.date()) -> str:
    return store.read_bytes(report_keys(name, day)[0]).decode()


def _section(page: str, sid: str) -> str:
    """The visible text of one section."""
    start = page.index(f"<section id='{sid}'>")
    return _text(page[start:page.index("</section>", start)])


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def _text(page: str) -> str:
    """The visible text, roughly: tags dropped, entities decoded."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_report_without_monitoring_has_every_section_and_the_registry_facts(store, trained):
    out = write_report(store, "lstm", now=NOW)
    page = _page(store)
    assert store.read_bytes(report_keys("lstm", NOW.date())[1]).decode() == page  # the dated copy
    assert out["latest"].endswith("reports/lstm/latest.html") and out["dated"].endswith("reports/lstm/2026-09-20.html")
    assert out["version"] == trained[1]["version"] and out["monitoring"] is False
    for sid, title in SECTIONS.items():
        assert f"<section id='{sid}'><h2>{html.escape(title)}</h2>" in page
    text = _text(page)
    pointer = json.loads(store.read_bytes("models/lstm/champion.json"))
    assert pointer["reason"] in text and pointer["version"] in text and "none (first champion)" in text
    # the test-span rows of metrics.json, formatted as the page formats them
    metrics = json.loads(store.read_bytes(f"models/lstm/versions/{pointer['version']}/metrics.json"))
    served = next(r for r in metrics["test"] if r["model"] == "served" and r["series_id"] == "ALL")
    assert f"{served['mase']:,.4g}" in text and f"{served['rmse']:,.4g}" in text
    for method, n in metrics["served"].items():
        assert re.search(rf"{method}\s+{n}\b", text)
    assert f"coverage on the test span {100 * metrics['intervals']['test']['coverage']:.1f} %" in text
    assert text.count(NO_MONITORING) == 3  # accuracy, coverage and worst series on actuals
    assert "This model was not tuned" in text
    # plots: the learning curve and the bundle's forecast-vs-actual, each a whole PNG
    images = _images(page)
    assert len(images) == 2 and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in images)


def test_every_data_string_is_escaped_and_nothing_is_fetched(store):
    write_report(store, "lstm", now=NOW)
    page = _page(store)
    assert "<script" not in page.lower()
    assert HOSTILE_SID not in page and HOSTILE_SID in _text(page)  # listed among the worst series, as text
    # self-contained: every src is inline data, every href an anchor on the page
    assert set(re.findall(r"src='([a-z]+):", page)) == {"data"}
    assert all(h.startswith("#") for h in re.findall(r"href='([^']*)'", page))
    assert "http://" not in page and "https://" not in page


def test_hostile_model_name_and_reason_are_escaped(store, trained):
    version = trained[1]["version"]
    src, dst = f"models/lstm/versions/{version}", f"models/{safe_key_part(HOSTILE_NAME)}/versions/{version}"
    for key in store.list(src + "/"):
        store.write_bytes(dst + key[len(src):], store.read_bytes(key))
    reason = "promoted: <b onmouseover=alert(2)>by hand</b>"
    pointer = {"name": HOSTILE_NAME, "version": version, "promoted_at": NOW.isoformat(), "reason": reason,
               "previous": "<i>old</i>"}
    store.write_bytes(f"models/{safe_key_part(HOSTILE_NAME)}/champion.json", json.dumps(pointer).encode())
    out = write_report(store, HOSTILE_NAME, now=NOW)
    assert f"reports/{safe_key_part(HOSTILE_NAME)}/latest.html" in out["latest"]
    page = _page(store, HOSTILE_NAME)
    for raw in (HOSTILE_NAME, reason, "<i>old</i>"):
        assert raw not in page and raw in _text(page)
    assert "<img src=x" not in page and "<b " not in page


def test_promotion_history_and_a_newer_unpromoted_bundle_are_shown(store, trained):
    pointer = json.loads(store.read_bytes("models/lstm/champion.json"))
    older = {"name": "lstm", "version": "20260101T000000000000Z-aaaaaaaa", "promoted_at": "2026-01-01T00:00:00+00:00",
             "reason": "promoted: first servable model (old)", "previous": None}
    store.write_bytes("models/lstm/champions/20260101T000000000000Z.json", json.dumps(older).encode())
    newer = "29990101T000000000000Z-bbbbbbbb"  # sorts after the champion: the newest bundle
    reason = "not promoted: mase 2.0 does not beat <the champion>"
    metrics = json.dumps({"decision": {"promote": False, "reason": reason}}).encode()
    store.write_bytes(f"models/lstm/versions/{newer}/metrics.json", metrics)
    store.write_bytes(f"models/lstm/versions/{newer}/manifest.json", json.dumps(
        {"format": 1, "name": "lstm", "version": newer,
         "files": {"metrics.json": hashlib.sha256(metrics).hexdigest()}}).encode())
    write_report(store, "lstm", now=NOW)
    page = _page(store)
    text = _text(page)
    assert text.index(pointer["version"]) < text.index(older["version"])  # newest promotion first
    assert "promoted: first servable model (old)" in text
    assert f"The newest bundle, {newer} , is not the champion: {reason}" in text
    assert "&lt;the champion&gt;" in page


def test_no_champion_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="has no champion.*nightcast retrain"):
        write_report(open_store(str(tmp_path / "empty")), "lstm")


def test_report_flow_writes_the_page_and_links_it(trained, tmp_path):
    shutil.copytree(trained[0], tmp_path / "store")
    out = report_flow("lstm", store=str(tmp_path / "store"))
    assert Path(out["latest"]).is_file() and Path(out["dated"]).is_file()
    assert Path(out["latest"]).read_bytes() == Path(out["dated"]).read_bytes()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["report-lstm"])))
    assert any(out["latest"] in (a.data or "") for a in arts)


# ---- accuracy on actuals: monitoring frames built here, in the layout of schemas/monitoring.py (layout 1)

DAY1, DAY2 = dt.date(2026, 9, 15), dt.date(2026, 9, 16)


def _write_parquet(store, table: str, day: dt.date, frame: pl.DataFrame, layout: str = "1") -> None:
    buf = io.BytesIO()
    frame.write_parquet(buf, metadata={"nightcast.monitoring_layout": layout, "nightcast.model": "lstm",
                                       "nightcast.date": day.isoformat()})
    name = {"runs": "run.parquet"}.get(table, f"{table}.parquet")
    store.write_bytes(f"monitoring/{table}/model=lstm/date={day.isoformat()}/{name}", buf.getvalue())


def _summary(day: dt.date, series: list[str]) -> pl.DataFrame:
    groups = [("all", "all", 0.61, 0.95, 0.75), ("as_of", "2026-09-13", 0.50, 0.90, 1.0),
              ("as_of", "2026-09-14", 0.62, 1.00, 0.5), ("as_of", "2026-09-15", 0.71, 0.95, None),
              ("model_version", "v1", 0.61, 0.95, 0.75), ("method", "lstm", 0.61, 0.95, 0.75),
              *[("horizon", str(h), 0.5 + h / 100, 0.9, 0.75) for h in range(1, 7)],
              (("series_id", series[0], 1.234567, 0.8, 0.5)), ("series_id", series[1], 0.4, 0.9, 1.0),
              ("series_id", series[2], 0.3, 1.1, 1.0)]
    return pl.DataFrame([{"model": "lstm", "date": day, "dimension": d, "key": k, "points": 12, "pending": 2,
                          "no_baseline": 0, "mase": m, "smape": 5.0, "rmse": 3.0, "mae": 2.0, "bias": -0.5,
                          "coverage": c, "interval_points": 12 if c is not None else 0, "snaive_mase": s,
                          "snaive_smape": 7.0, "snaive_rmse": 4.0, "snaive_mae": 3.0, "snaive_bias": 0.1}
                         for d, k, m, s, c in groups])


def _points(day: dt.date, sid: str, actual_shift: float) -> pl.DataFrame:
    rows = []
    for origin in (dt.date(2026, 9, 13), dt.date(2026, 9, 14)):
        for h in range(1, 7):
            ts = dt.datetime.combine(origin, dt.time()) + dt.timedelta(days=1, hours=h - 1)
            rows.append({"series_id": sid, "timestamp": ts, "as_of": origin, "model_version": "v1", "horizon": h,
                         "method": "lstm", "forecast": 100.0 + h, "lower": 95.0 + h, "upper": 105.0 + h,
                         "actual": 101.0 + h + actual_shift, "snaive": 99.0, "scale": 2.0, "status": "scored",
                         "change": "new" if actual_shift == 0 else "revised", "revisions": int(actual_shift != 0),
                         "first_seen": DAY1, "scored_on": DAY1, "model": "lstm", "date": day})
    return pl.DataFrame(rows).with_columns(pl.col("horizon", "revisions").cast(pl.Int32))


def _run(day: dt.date, reason: str) -> pl.DataFrame:
    return pl.DataFrame([{"model": "lstm", "date": day, "champion": "v1", "forecast_partitions": 2, "points": 14,
                          "scored": 12, "pending": 2, "quarantined": 0, "no_baseline": 0, "new": 12, "late": 0,
                          "revised": int(day == DAY2), "updated": 0, "withdrawn": 0, "dropped": 0, "actual_rows": 500,
                          "duplicate_rows_dropped": 0, "duplicate_keys_refused": 0, "mase": 0.61, "snaive_mase": 0.95,
                          "coverage": 0.75, "drift_origins": 2, "drift_points": 12, "drift_mase": 0.61,
                          "drift_snaive_mase": 0.95, "test_mase": 0.4, "drift": False, "drift_reason": reason}])


@pytest.fixture()
def monitored(store):
    """Two monitoring dates: the second revises the worst series' actuals; a third file has an unknown layout."""
    version = json.loads(store.read_bytes("models/lstm/champion.json"))["version"]
    series = sorted(json.loads(store.read_bytes(f"models/lstm/versions/{version}/preprocessing.json"))
                    ["combination"]["per_series"])
    worst = HOSTILE_SID if HOSTILE_SID in series else series[0]
    order = [worst] + [s for s in series if s != worst]
    _write_parquet(store, "points", DAY1, pl.concat([_points(DAY1, sid, 0.0) for sid in order]))
    _write_parquet(store, "points", DAY2, _points(DAY2, worst, 3.0))  # revised: the newest row wins
    _write_parquet(store, "summary", DAY1, _summary(DAY1, order).with_columns(pl.col("mase") * 2))
    _write_parquet(store, "summary", DAY2, _summary(DAY2, order))
    _write_parquet(store, "runs", DAY1, _run(DAY1, "not judged: <2 origins>"))
    _write_parquet(store, "runs", DAY2, _run(DAY2, "no drift: MASE 0.61 <= 0.95"))
    _write_parquet(store, "summary", dt.date(2026, 9, 17), _summary(DAY2, order), layout="99")
    return store, order


def test_monitoring_is_read_as_of_the_newest_run_each_point_once(monitored):
    store, order = monitored
    mon = read_monitoring(store, "lstm")
    assert mon.summary["date"].unique().to_list() == [DAY2]  # the layout-99 file was skipped, and said so
    assert any("layout '99'" in n for n in mon.notes)
    assert mon.runs["date"].to_list() == [DAY1, DAY2]
    # the worst series' points: the state as of the newest change log, each point once
    assert set(mon.points["series_id"].to_list()) <= set(order) and order[0] in mon.points["series_id"].to_list()
    worst = mon.points.filter(pl.col("series_id") == order[0])
    assert worst.height == 12 and (worst["actual"] - worst["forecast"]).to_list() == [4.0] * 12
    assert read_monitoring(open_store(str(store.url) + "-none"), "lstm") is None


def test_report_with_monitoring_shows_accuracy_coverage_and_worst_series_on_actuals(monitored):
    store, order = monitored
    out = write_report(store, "lstm", now=NOW)
    assert out["monitoring"] is True
    page = _page(store)
    text = _text(page)
    assert NO_MONITORING not in text
    actuals = _section(page, "actuals")
    assert re.search(r"all 12 2 0\.61 0\.95 5 3 -0\.5 75\.0 %", actuals)  # newest summary, not DAY1's doubled MASE
    assert "2026-09-15" in actuals and "no drift: MASE 0.61 <= 0.95" in actuals and "not judged: <2 origins>" in actuals
    assert "&lt;2 origins&gt;" in page and "layout '99'" in actuals
    coverage = _section(page, "coverage")
    assert "coverage on actuals 75.0 %" in coverage and "points with an interval 12" in coverage
    worst = _section(page, "worst-series").split("On actuals")[1]
    assert worst.index(order[0]) < worst.index(order[1]) and "1.235" in worst
    assert order[0] in _text(page) and "<script" not in page.lower()
    mix = _section(page, "served-mix")
    assert "On actuals, by served method" in mix
    # learning curve, test-span plot, MASE by origin, coverage by origin, worst series on actuals
    images = _images(page)
    assert len(images) == 5 and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in images)


def test_the_learning_curve_section_names_the_tensorboard_log_when_the_bundle_has_one(store):
    inputs = gather_report(store, "lstm")
    # retrain puts the log in every bundle now
    assert "tensorboard/events.out.tfevents.nightcast" in inputs.bundle.manifest["files"]
    section = _section(render_report(inputs, NOW), "learning-curve")
    assert f"TensorBoard log {inputs.bundle_uri}/tensorboard/ (1 event file(s))" in section
    for name in [f for f in inputs.bundle.manifest["files"] if f.startswith("tensorboard/")]:
        del inputs.bundle.manifest["files"][name]  # a bundle from before the log existed
    assert "TensorBoard log" not in _section(render_report(inputs, NOW), "learning-curve")


def test_report_flow_refuses_a_model_name_the_registry_would_not_mint(tmp_path):
    with pytest.raises(Exception, match="model_name"):
        report_flow("<b>x</b>", store=str(tmp_path / "store"))
    assert not (tmp_path / "store" / "reports").exists()


def test_the_tuning_history_shows_the_study_its_plots_and_its_best_trials(store):
    inputs = gather_report(store, "lstm")
    inputs.bundle.manifest["tuning"] = {
        "study_name": "nightcast-lstm", "sampler": "tpe", "metric": "mase", "best_value": 0.4123, "best_trial": 2,
        "best_params": {"model.hidden_size": 64, "train.lr": "<0.003>"}, "trials": {"COMPLETE": 3, "PRUNED": 1}}
    inputs.files["tuning/optimization_history.png"] = inputs.files["plots/learning_curve.png"]
    inputs.files["tuning/trials.csv"] = (b"number,state,value,seconds,worker,error,param:model.hidden_size\n"
                                         b"0,COMPLETE,0.5,3.1,w1,,32\n1,PRUNED,,1.0,w1,,16\n"
                                         b"2,COMPLETE,0.4123,2.9,w2,,64\n3,COMPLETE,0.45,3.0,w2,,48\n")
    page = render_report(inputs, NOW)
    section = _section(page, "tuning")
    assert "study nightcast-lstm" in section and "trials by state COMPLETE: 3, PRUNED: 1" in section
    assert "model.hidden_size 64" in section and "train.lr <0.003>" in section and "&lt;0.003&gt;" in page
    trials = section.split("Trials (best first)")[1]
    assert [int(n) for n in re.findall(r"(?:^| )(\d) (?:COMPLETE|PRUNED)", trials)] == [2, 3, 0, 1]
    start = page.index("<section id='tuning'>")
    assert len(_images(page[start:page.index("</section>", start)])) == 1
