"""deployments/prefect.yaml is the one declaration that both `prefect deploy` and `nightcast serve` read."""

import pytest

from flows.serve import DECLARATIONS, build_deployments, load_declarations, load_flow


def test_declarations_name_real_flows_with_explicit_time_zones():
    decl = {d["name"]: d for d in load_declarations()}
    assert set(decl) == {"nightly", "daily", "backfill", "weekly"}
    flows = {name: load_flow(d["entrypoint"]).name for name, d in decl.items()}
    assert flows == {"nightly": "retrain", "daily": "score", "backfill": "backfill", "weekly": "tune"}
    for d in decl.values():
        assert d["work_pool"]["name"] == "nightcast"
        assert all(s["timezone"] for s in d["schedules"])
    assert decl["backfill"]["schedules"] == []


def test_serve_builds_the_same_schedules_and_parameters():
    built = {d.name: d for d in build_deployments()}
    assert [(s.schedule.cron, s.schedule.timezone) for s in built["nightly"].schedules] == [("0 2 * * *", "UTC")]
    assert [(s.schedule.cron, s.schedule.timezone) for s in built["daily"].schedules] == [("30 3 * * *", "UTC")]
    assert [(s.schedule.cron, s.schedule.timezone) for s in built["weekly"].schedules] == [("0 4 * * 0", "UTC")]
    assert built["backfill"].schedules == [] and built["backfill"].parameters == {"max_parallel": 2}
    # date parameters reach the UI's form as dates
    props = built["backfill"]._parameter_openapi_schema.properties
    assert props["start"]["format"] == "date" and props["end"]["format"] == "date"


def test_a_cron_without_a_time_zone_is_refused(tmp_path):
    bad = tmp_path / "prefect.yaml"
    bad.write_text(DECLARATIONS.read_text().replace("        timezone: UTC", "", 1))
    with pytest.raises(ValueError, match="'nightly' has a cron schedule without a timezone"):
        load_declarations(bad)


def test_deployments_that_move_shared_state_run_one_at_a_time():
    built = {d.name: d for d in build_deployments()}
    assert built["nightly"].concurrency_limit == 1  # it moves the champion pointer
    assert built["nightly"].concurrency_options.collision_strategy.value == "ENQUEUE"
    # one atomic object per partition; trials shared through the study's RDB: safe to overlap
    assert built["daily"].concurrency_limit is None and built["weekly"].concurrency_limit is None
