"""Warm start: fine-tune from the champion's weights instead of training from scratch.

Weights transfer when the network is the same shape and the inputs mean the
same thing: the same encoded feature columns in the same order, the same
scaler kind, the same step frequency and horizon. Targets are scaled per
series with scalers fitted on the *new* training span, so a model trained on
some series fine-tunes onto new series the same way (transfer).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from nightcast.schemas.params import RetrainParams, WarmStartConfig
from nightcast.tasks.data.prepare import Prepared
from nightcast.tasks.forecast.train import network_args_for
from nightcast.tasks.ops.registry import Bundle


@dataclass(frozen=True)
class WarmPlan:
    warm: bool
    reason: str
    full_trained_at: str | None = None  # when the lineage last trained from scratch (ISO date-time)


def plan_warm_start(cfg: WarmStartConfig, champion_manifest: dict | None, now: dt.datetime) -> WarmPlan:
    """Decide by policy: never, always, or periodic (a full retrain every ``full_retrain_days``)."""
    if cfg.policy == "never":
        return WarmPlan(False, "policy never")
    if champion_manifest is None:
        return WarmPlan(False, "no champion to start from")
    lineage = (champion_manifest.get("warm_start") or {}).get("full_trained_at") or champion_manifest["created_at"]
    if cfg.policy == "periodic":
        age = now - dt.datetime.fromisoformat(lineage)
        if age >= dt.timedelta(days=cfg.full_retrain_days):
            return WarmPlan(False, f"periodic: last full training {age.days} day(s) ago, "
                                   f"full retrain every {cfg.full_retrain_days}")
    return WarmPlan(True, f"policy {cfg.policy}", lineage)


def incompatibility(champion_config: dict, champion_features: dict, network_args: dict, features: dict,
                    frequency: str) -> str | None:
    """Why the champion's weights cannot seed this network, or ``None`` when they can."""
    old = champion_config["network_args"]
    shape = {k: (old.get(k), network_args.get(k)) for k in set(old) | set(network_args)
             if old.get(k) != network_args.get(k)}
    if shape:
        return "network differs: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(shape.items()))
    for key in ("past_columns", "future_columns"):
        if champion_features[key] != features[key]:
            return f"feature layout differs ({key}): {champion_features[key]} -> {features[key]}"
    if champion_features["scaler"] != features["scaler"]:
        return f"scaler differs: {champion_features['scaler']} -> {features['scaler']}"
    old_freq = champion_config["calendar"]["frequency"]
    if old_freq != frequency:
        return f"frequency differs: {old_freq} -> {frequency}"
    return None


def warm_start_from(params: RetrainParams, prepared: Prepared, champion: Bundle | None,
                    champion_error: str, log: logging.Logger | None = None) -> tuple[dict | None, dict]:
    """The champion's weights to start from, or ``None``; and what was decided, for the manifest."""
    logger = log or logging.getLogger(__name__)
    if params.warm_start.policy == "never":
        return None, {"used": False, "reason": "policy never"}
    if champion_error:
        logger.warning("warm start not possible, training from scratch: %s", champion_error)
        return None, {"used": False, "reason": f"champion unusable: {champion_error}"}
    plan = plan_warm_start(params.warm_start, champion.manifest if champion else None,
                           dt.datetime.now(dt.timezone.utc))
    if not plan.warm:
        logger.info("training from scratch: %s", plan.reason)
        return None, {"used": False, "reason": plan.reason}
    why = incompatibility(champion.config, champion.preprocessing["features"],
                          network_args_for(prepared.index, params.model),
                          prepared.state.to_json(), prepared.calendar.frequency)
    if why:
        logger.warning("warm start not possible, training from scratch: %s", why)
        return None, {"used": False, "reason": why}
    logger.info("warm start from champion %s (%s)", champion.version, plan.reason)
    return champion.networks()[0].state_dict(), {"used": True, "from": champion.version, "reason": plan.reason,
                                 "full_trained_at": plan.full_trained_at}
