"""Serve every deployment declared in ``deployments/prefect.yaml`` from one process.

The YAML is the single declaration of names, schedules and default
parameters: ``prefect deploy`` reads it for work pools, ``nightcast serve``
reads it here for the embedded, one-machine shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DECLARATIONS = Path(__file__).resolve().parent.parent / "deployments" / "prefect.yaml"


def load_declarations(path: Path = DECLARATIONS) -> list[dict[str, Any]]:
    """The ``deployments:`` entries of a prefect.yaml, checked for what serving needs."""
    spec = yaml.safe_load(path.read_text()) or {}
    entries = spec.get("deployments") or []
    for d in entries:
        missing = [k for k in ("name", "entrypoint") if not d.get(k)]
        if missing:
            raise ValueError(f"{path}: deployment {d.get('name', '?')!r} lacks {missing}")
        for s in d.get("schedules") or []:
            if "cron" in s and not s.get("timezone"):
                raise ValueError(f"{path}: deployment {d['name']!r} has a cron schedule without a timezone")
    return entries


def load_flow(entrypoint: str) -> Any:
    """``nightcast.flows.retrain.retrain_flow`` → the flow object, loaded as ``prefect deploy`` and workers load
    an entrypoint (a module path: imported from the installed package); an entrypoint that does not load fails
    here rather than becoming a placeholder flow."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


def load_triggers(declaration: dict[str, Any]) -> list[Any]:
    """A declaration's ``triggers:`` as Prefect deployment triggers, read as ``prefect deploy`` reads them
    (the same model, the same default name ``<deployment>__automation_<i>``); templates such as
    ``{{ event.payload.store }}`` stay as they are, for the server to fill in when the trigger fires."""
    from pydantic import TypeAdapter
    from prefect.events import DeploymentTriggerTypes

    adapter: TypeAdapter = TypeAdapter(DeploymentTriggerTypes)
    return [adapter.validate_python({"name": f"{declaration['name']}__automation_{i}", **spec})
            for i, spec in enumerate(declaration.get("triggers") or [], start=1)]


def build_deployments(path: Path = DECLARATIONS) -> list[Any]:
    """``RunnerDeployment`` objects for ``prefect.serve``: same names, schedules, parameters, concurrency
    limits and triggers (automations, created when the deployment is registered)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.types.entrypoint import EntrypointType
    from prefect.schedules import Cron

    out = []
    for d in load_declarations(path):
        schedules = [Cron(s["cron"], timezone=s["timezone"], active=s.get("active", True))
                     for s in d.get("schedules") or []]
        limit = d.get("concurrency_limit")
        out.append(load_flow(d["entrypoint"]).to_deployment(
            name=d["name"], entrypoint_type=EntrypointType.MODULE_PATH, description=d.get("description"), tags=d.get("tags"),
            parameters=d.get("parameters") or {}, schedules=schedules,
            concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
            triggers=load_triggers(d)))
    return out


def serve(limit: int | None = None) -> None:
    """Register the deployments with the Prefect API and run their flow runs here until stopped."""
    from prefect import serve as prefect_serve

    deployments = build_deployments()
    print(f"serving {len(deployments)} deployments from {DECLARATIONS}: "
          + ", ".join(f"{d.flow_name}/{d.name}" for d in deployments), flush=True)
    prefect_serve(*deployments, limit=limit)
