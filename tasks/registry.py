"""Model bundles and the champion pointer in object storage.

Layout under the store root::

    models/<name>/versions/<version>/{weights.pt, config.json, preprocessing.json,
                                      metrics.json, history.csv, manifest.json}
    models/<name>/champion.json            # the pointer, replaced in one atomic write
    models/<name>/champions/<stamp>.json   # every promotion, for "champion as of a date"

``manifest.json`` is written last and lists every file's SHA-256: a bundle
without it is incomplete, a file whose hash differs is corrupt. Nothing in a
bundle executes code when loaded: JSON, CSV and a weights-only state dict.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import platform
from dataclasses import dataclass
from importlib import metadata

import torch

from models.network import LSTMForecaster
from schemas.params import PromotionRule
from tasks.storage import Store

BUNDLE_FORMAT = 1
_LIBS = ("torch", "lightning", "polars", "pandera", "prefect", "scikit-learn", "numpy", "nightcast")


class RegistryError(RuntimeError):
    """A bundle or champion pointer is missing, incomplete or corrupt."""


@dataclass
class Bundle:
    name: str
    version: str
    config: dict  # run parameters + network_args + calendar + season_length
    preprocessing: dict  # FeatureState + IQR bounds
    metrics: dict
    manifest: dict
    state_dict: dict[str, torch.Tensor]

    def network(self) -> LSTMForecaster:
        net = LSTMForecaster(**self.config["network_args"])
        net.load_state_dict(self.state_dict)
        return net.eval()


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def _prefix(name: str) -> str:
    return f"models/{name}"


def new_version(fingerprint: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{fingerprint[:8]}"


def save_bundle(store: Store, name: str, version: str, *, net: torch.nn.Module, config: dict,
                preprocessing: dict, metrics: dict, history_csv: str, manifest: dict,
                extra_files: dict[str, bytes] | None = None) -> str:
    """Write every file of a bundle, the manifest (with checksums) last. Returns the bundle prefix.

    ``extra_files`` (plots, tuning tables) are stored and checksummed like the rest.
    """
    prefix = f"{_prefix(name)}/versions/{version}"
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
    files = {
        "weights.pt": buf.getvalue(),
        "config.json": json.dumps(config, indent=2, default=str).encode(),
        "preprocessing.json": json.dumps(preprocessing, indent=2).encode(),
        "metrics.json": json.dumps(metrics, indent=2).encode(),
        "history.csv": history_csv.encode(),
        **(extra_files or {}),
    }
    for fname, data in files.items():
        store.write_bytes(f"{prefix}/{fname}", data)
    manifest = {**manifest, "format": BUNDLE_FORMAT, "name": name, "version": version,
                "files": {f: hashlib.sha256(d).hexdigest() for f, d in files.items()}}
    store.write_bytes(f"{prefix}/manifest.json", json.dumps(manifest, indent=2).encode())
    return prefix


def load_bundle(store: Store, name: str, version: str) -> Bundle:
    """Load and verify a bundle; raise ``RegistryError`` naming what is wrong."""
    prefix = f"{_prefix(name)}/versions/{version}"
    try:
        manifest = json.loads(store.read_bytes(f"{prefix}/manifest.json"))
    except FileNotFoundError as exc:
        raise RegistryError(f"bundle {store.uri(prefix)} is missing or incomplete (no manifest.json)") from exc
    except json.JSONDecodeError as exc:
        raise RegistryError(f"bundle {store.uri(prefix)}: manifest.json is not valid JSON ({exc})") from exc
    blobs = {}
    for fname, digest in manifest.get("files", {}).items():
        try:
            data = store.read_bytes(f"{prefix}/{fname}")
        except FileNotFoundError as exc:
            raise RegistryError(f"bundle {store.uri(prefix)} lacks {fname}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"bundle {store.uri(prefix)}: {fname} is corrupt (checksum mismatch)")
        blobs[fname] = data
    state = torch.load(io.BytesIO(blobs["weights.pt"]), map_location="cpu", weights_only=True)
    return Bundle(name, version, json.loads(blobs["config.json"]), json.loads(blobs["preprocessing.json"]),
                  json.loads(blobs["metrics.json"]), manifest, state)


def _read_pointer(store: Store, key: str, what: str) -> dict:
    """A champion pointer or promotion record: JSON with a ``version``; ``RegistryError`` when corrupt."""
    raw = store.read_bytes(key)
    try:
        pointer = json.loads(raw)
        if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
            raise ValueError("no 'version' field")
    except ValueError as exc:
        raise RegistryError(f"{what} {store.uri(key)} is corrupt: {exc}") from exc
    return pointer


def read_champion(store: Store, name: str) -> dict | None:
    """The champion pointer, ``None`` when there is none; ``RegistryError`` when it is corrupt."""
    try:
        return _read_pointer(store, f"{_prefix(name)}/champion.json", "champion pointer")
    except FileNotFoundError:
        return None


def load_champion(store: Store, name: str) -> Bundle:
    pointer = read_champion(store, name)
    if pointer is None:
        raise RegistryError(f"model {name!r} has no champion in {store.url}: run `nightcast retrain` first")
    return load_bundle(store, name, pointer["version"])


def champion_as_of(store: Store, name: str, day: dt.date) -> dict | None:
    """The champion pointer in force at the end of ``day`` (UTC), from the promotion history.

    ``None`` when the history has no promotion on or before that day.
    """
    limit = f"{day + dt.timedelta(days=1):%Y%m%d}T"  # history keys are UTC stamps: they sort by time
    keys = [k for k in store.list(f"{_prefix(name)}/champions/")
            if k.endswith(".json") and k.rsplit("/", 1)[-1] < limit]
    if not keys:
        return None
    return _read_pointer(store, max(keys), "promotion record")


def set_champion(store: Store, name: str, version: str, decision: Decision, metric: dict,
                 now: dt.datetime | None = None) -> dict:
    """Point the champion at ``version`` (one atomic write) and record the promotion."""
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    pointer = {"name": name, "version": version, "promoted_at": now.isoformat(),
               "reason": decision.reason, "metric": metric}
    store.write_bytes(f"{_prefix(name)}/champions/{now:%Y%m%dT%H%M%S%fZ}.json", json.dumps(pointer).encode())
    store.write_bytes(f"{_prefix(name)}/champion.json", json.dumps(pointer, indent=2).encode())
    return pointer


def decide_promotion(rule: PromotionRule, new: float, seasonal_naive: float,
                     champion: float | None, champion_note: str = "") -> Decision:
    """Apply the promotion rule to metrics measured on the same test windows (lower is better)."""
    need = 1.0 - rule.min_improvement
    if champion is None:
        # the first model of a name is always served: its per-series choice already fell back to the
        # baselines wherever the network lost on validation, so downstream never goes blank
        vs = "beats" if new < seasonal_naive else "does not beat"
        return Decision(True, f"promoted: first servable model ({rule.metric} {new:.4f} served; {vs} seasonal "
                              f"naive {seasonal_naive:.4f} on the test span)")
    reasons = []
    if rule.beat_seasonal_naive:
        if not new < seasonal_naive * need:
            return Decision(False, f"not promoted: {rule.metric} {new:.4f} does not beat seasonal naive "
                                   f"{seasonal_naive:.4f} (min improvement {rule.min_improvement:.0%})")
        reasons.append(f"beats seasonal naive ({new:.4f} < {seasonal_naive:.4f})")
    if rule.beat_champion and champion is not None:
        if not new < champion * need:
            return Decision(False, f"not promoted: {rule.metric} {new:.4f} does not beat the champion "
                                   f"{champion:.4f} on the same windows")
        reasons.append(f"beats the champion ({new:.4f} < {champion:.4f})")
    elif champion_note:
        reasons.append(champion_note)
    return Decision(True, "promoted: " + "; ".join(reasons or ["no conditions configured"]))
