"""deployments/prefect.yaml is the one declaration that both `prefect deploy` and `nightcast serve` read."""

import pytest

from nightcast.flows.serve import DECLARATIONS, build_deployments, load_declarations, load_flow


def test_declarations_name_real_flows_with_explicit_time_zones():
    decl = {d["name"]: d for d in load_declarations()}
    assert set(decl) == {"nightly", "daily", "accuracy", "backfill", "weekly"}
    flows = {name: load_flow(d["entrypoint"]).name for name, d in decl.items()}
    assert flows == {"nightly": "retrain", "daily": "score", "accuracy": "monitor", "backfill": "backfill",
                     "weekly": "tune"}
    for d in decl.values():
        assert d["work_pool"]["name"] == "nightcast"
        assert all(s["timezone"] for s in d["schedules"])
    assert decl["backfill"]["schedules"] == []


def test_serve_builds_the_same_schedules_and_parameters():
    built = {d.name: d for d in build_deployments()}
    assert [(s.schedule.cron, s.schedule.timezone) for s in built["nightly"].schedules] == [("0 2 * * *", "UTC")]
    assert [(s.schedule.cron, s.schedule.timezone) for s in built["daily"].schedules] == [("30 3 * * *", "UTC")]
    assert [(s.schedule.cron, s.schedule.timezone) for s in built["weekly"].schedules] == [("0 4 * * 0", "UTC")]
    # the monitor runs after the daily score
    assert [(s.schedule.cron, s.schedule.timezone) for s in built["accuracy"].schedules] == [("30 4 * * *", "UTC")]
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
    assert built["accuracy"].concurrency_limit == 1  # each run builds on the state the previous one left
    assert built["accuracy"].concurrency_options.collision_strategy.value == "ENQUEUE"


def test_drift_events_trigger_the_retrain_deployment():
    """The monitor's ``nightcast.drift.detected`` starts retrain/nightly for the model it names, on its store."""
    from prefect.events.schemas.automations import Posture

    from nightcast.tasks.ops.monitor import DRIFT_EVENT

    built = {d.name: d for d in build_deployments()}
    assert {name for name, d in built.items() if d.triggers} == {"nightly"}
    (trigger,) = built["nightly"].triggers
    assert trigger.name == "retrain-on-drift" and trigger.enabled
    assert trigger.expect == {DRIFT_EVENT} and trigger.posture == Posture.Reactive and trigger.threshold == 1
    assert trigger.match.root == {"prefect.resource.id": "nightcast.model.*"}
    assert trigger.for_each == {"prefect.resource.id"}  # one retrain per drifting model
    # templates the server fills from the event when it fires; they name fields the monitor sends
    assert trigger.parameters == {"store": "{{ event.payload.store }}",
                                  "params": {"model_name": "{{ event.resource['nightcast.model.name'] }}",
                                             "data": "{{ event.payload.data }}"}}
    # what `prefect deploy` would make of the same YAML: the same automation
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    (decl,) = [d for d in load_declarations() if d["name"] == "nightly"]
    (deployed,) = _initialize_deployment_triggers("nightly", [dict(t) for t in decl["triggers"]])
    assert deployed.model_dump() == trigger.model_dump()


def test_an_unknown_trigger_field_type_is_refused(tmp_path):
    bad = tmp_path / "prefect.yaml"
    bad.write_text(DECLARATIONS.read_text().replace("threshold: 1", "threshold: many", 1))
    (nightly,) = [d for d in load_declarations(bad) if d["name"] == "nightly"]
    from pydantic import ValidationError

    from nightcast.flows.serve import load_triggers

    with pytest.raises(ValidationError, match="threshold"):
        load_triggers(nightly)
