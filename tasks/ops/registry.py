"""Model bundles and the champion pointer in object storage.

Layout under the store root::

    models/<name>/versions/<version>/{weights.pt, config.json, preprocessing.json,
                                      metrics.json, history.csv, manifest.json}
    models/<name>/champion.json            # the pointer, moved by compare-and-swap only
    models/<name>/champions/<stamp>.json   # every promotion, for "champion as of a date"

``manifest.json`` is written last and lists every file's SHA-256: a bundle
without it is incomplete (never a candidate, swept after a grace period), a
file whose hash differs is corrupt. Nothing in a bundle executes code when
loaded: JSON checked against ``nightcast.schemas.bundle``, CSV and a weights-only state dict.

The champion pointer moves by compare-and-swap (``Store.write_if``: S3
``If-Match``/``If-None-Match``, a locked compare-and-replace on a local
directory): a promotion is decided against the pointer it replaces, and a
run that lost the race decides again against the new champion. The pointer is
the truth; its history record is written after it, keyed by the pointer's own
stamp, and readers treat the pointer as part of the history, so the two cannot
disagree after a crash between the writes (the next promotion writes a missing
record).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import pickle
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import torch
from pydantic import ValidationError

from nightcast.models.network import LSTMForecaster
from nightcast.schemas.bundle import BundleConfig, ChampionPointer, Manifest
from nightcast.schemas.params import PromotionRule
from nightcast.tasks.ops.storage import Store, safe_key_part

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

    def networks(self) -> list[LSTMForecaster]:
        """Every seed's network (an ensemble bundle keeps member ``k``'s tensors under ``member<k>.``)."""
        members = int(self.config.get("ensemble", 1))
        nets = []
        for k in range(members):
            net = LSTMForecaster(**self.config["network_args"])
            prefix = f"member{k}."
            state = (self.state_dict if members == 1 else
                     {n[len(prefix):]: t for n, t in self.state_dict.items() if n.startswith(prefix)})
            net.load_state_dict(state)
            nets.append(net.eval())
        return nets

    def network(self) -> LSTMForecaster:
        return self.networks()[0]


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
    return f"models/{safe_key_part(name)}"


def new_version(fingerprint: str, now: dt.datetime | None = None) -> str:
    """A version name: the run's UTC start stamp and the data fingerprint. Minted once per run, before
    the register step, so a retried register writes the same version instead of a second one."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{fingerprint[:8]}"


def _error_text(exc: BaseException) -> str:
    """The first line of an error, without advice to load untrusted files unsafely."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first if "weights_only" not in first else type(exc).__name__


def _parse(model: type, raw: bytes, what: str):  # noqa: ANN202
    """JSON bytes checked against a schema; ``RegistryError`` naming the file and the field otherwise."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()[:5])
        raise RegistryError(f"{what} does not match the bundle schema: {problems}") from None


def save_bundle(store: Store, name: str, version: str, *, net: torch.nn.Module | list[torch.nn.Module], config: dict,
                preprocessing: dict, metrics: dict, history_csv: str, manifest: dict,
                extra_files: dict[str, bytes] | None = None) -> str:
    """Write every file of a bundle, the manifest (with checksums) last. Returns the bundle prefix.

    ``extra_files`` (plots, tuning tables) are stored and checksummed like the rest.
    """
    prefix = f"{_prefix(name)}/versions/{version}"
    buf = io.BytesIO()
    nets = net if isinstance(net, list) else [net]
    config = {**config, "ensemble": len(nets)}
    tensors = ({k: v.detach().cpu() for k, v in nets[0].state_dict().items()} if len(nets) == 1 else
               {f"member{i}.{k}": v.detach().cpu() for i, m in enumerate(nets) for k, v in m.state_dict().items()})
    torch.save(tensors, buf)
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
    where = store.uri(prefix)
    try:
        raw = store.read_bytes(f"{prefix}/manifest.json")
    except FileNotFoundError as exc:
        raise RegistryError(f"bundle {where} is missing or incomplete (no manifest.json)") from exc
    manifest = _parse(Manifest, raw, f"bundle {where}: manifest.json").model_dump()
    required = {"weights.pt", "config.json", "preprocessing.json", "metrics.json"}
    if missing := sorted(required - set(manifest["files"])):
        raise RegistryError(f"bundle {where}: manifest.json does not list {', '.join(missing)}")
    blobs = {}
    for fname, digest in manifest["files"].items():
        try:
            data = store.read_bytes(f"{prefix}/{fname}")
        except FileNotFoundError as exc:
            raise RegistryError(f"bundle {where} lacks {fname}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"bundle {where}: {fname} is corrupt (checksum mismatch)")
        blobs[fname] = data
    _parse(BundleConfig, blobs["config.json"], f"bundle {where}: config.json")  # checked; kept as plain JSON
    other = {}
    for fname in ("preprocessing.json", "metrics.json"):
        try:
            other[fname] = json.loads(blobs[fname])
        except ValueError as exc:
            raise RegistryError(f"bundle {where}: {fname} is not valid JSON ({exc})") from None
        if not isinstance(other[fname], dict):
            raise RegistryError(f"bundle {where}: {fname} is not a JSON object")
    try:  # tensors only: a pickle that would build any other object is refused, never run
        state = torch.load(io.BytesIO(blobs["weights.pt"]), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise RegistryError(f"bundle {where}: weights.pt is not a plain tensor state dict, refused without "
                            f"running it ({type(exc).__name__}: {_error_text(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RegistryError(f"bundle {where}: weights.pt is not a state dict of tensors")
    bundle = Bundle(name, version, json.loads(blobs["config.json"]), other["preprocessing.json"],
                    other["metrics.json"], manifest, state)
    try:  # the weights must fit the declared network, checked here rather than at first use
        bundle.networks()
    except (RuntimeError, ValueError, TypeError) as exc:
        raise RegistryError(f"bundle {where}: weights.pt does not fit network_args in config.json "
                            f"({_error_text(exc)})") from None
    return bundle


def _pointer_from(raw: bytes, where: str, what: str) -> dict:
    """A champion pointer or promotion record: JSON with a ``version``; ``RegistryError`` when corrupt."""
    try:
        pointer = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{what} {where} is corrupt: not valid JSON ({exc})") from None
    if not isinstance(pointer, dict):
        raise RegistryError(f"{what} {where} is corrupt: not a JSON object")
    _parse(ChampionPointer, raw, f"{what} {where}")
    return pointer


def _read_pointer(store: Store, key: str, what: str) -> dict:
    return _pointer_from(store.read_bytes(key), store.uri(key), what)


def _pointer_key(name: str) -> str:
    return f"{_prefix(name)}/champion.json"


def _history_key(name: str, pointer: dict) -> str:
    stamp = dt.datetime.fromisoformat(pointer["promoted_at"]).astimezone(dt.timezone.utc)
    return f"{_prefix(name)}/champions/{stamp:%Y%m%dT%H%M%S%fZ}.json"


def read_champion(store: Store, name: str) -> dict | None:
    """The champion pointer, ``None`` when there is none; ``RegistryError`` when it is corrupt."""
    try:
        return _read_pointer(store, _pointer_key(name), "champion pointer")
    except FileNotFoundError:
        return None


def load_champion(store: Store, name: str) -> Bundle:
    pointer = read_champion(store, name)
    if pointer is None:
        raise RegistryError(f"model {name!r} has no champion in {store.url}: run `nightcast retrain` first")
    return load_bundle(store, name, pointer["version"])


def champion_as_of(store: Store, name: str, day: dt.date) -> dict | None:
    """The champion pointer in force at the end of ``day`` (UTC), from the promotion history.

    The current pointer counts as history too (its record may not be written yet after a crash).
    ``None`` when nothing was promoted on or before that day.
    """
    limit = f"{day + dt.timedelta(days=1):%Y%m%d}T"  # history keys are UTC stamps: they sort by time
    keys = {k: None for k in store.list(f"{_prefix(name)}/champions/")
            if k.endswith(".json") and k.rsplit("/", 1)[-1] < limit}
    current = read_champion(store, name)
    if current is not None and current.get("promoted_at"):
        key = _history_key(name, current)
        if key.rsplit("/", 1)[-1] < limit:
            keys[key] = current
    if not keys:
        return None
    last = max(keys)
    return keys[last] or _read_pointer(store, last, "promotion record")


def _write_history(store: Store, name: str, pointer: dict) -> None:
    """The promotion record of a pointer; same key and bytes every time, so rewriting it is harmless."""
    if pointer.get("promoted_at"):
        store.write_bytes(_history_key(name, pointer), json.dumps(pointer, sort_keys=True).encode())


Decide = Callable[[dict | None], "tuple[Decision, dict]"]


def promote(store: Store, name: str, version: str, decide: Decide, *, now: Callable[[], dt.datetime] | None = None,
            attempts: int = 10) -> tuple[Decision, dict | None]:
    """Move the champion pointer to ``version`` if ``decide`` says so, by compare-and-swap.

    ``decide(current_pointer)`` returns the decision and the metric to record, judged against the
    pointer exactly as read. The swap succeeds only if the pointer is still that one; when another
    run moved it meanwhile, the pointer is read again and ``decide`` is asked again about the new
    champion. A pointer already at ``version`` (a retried register) is left alone: the same run
    never promotes twice. Returns the decision and the pointer now in force.
    """
    clock = now or (lambda: dt.datetime.now(dt.timezone.utc))
    key = _pointer_key(name)
    for _ in range(attempts):
        got = store.read_versioned(key)
        try:
            current = None if got is None else _pointer_from(got[0], store.uri(key), "champion pointer")
        except RegistryError:  # a corrupt pointer serves nothing: judged as no champion, and replaced by the swap
            current = None
        if current is not None:
            _write_history(store, name, current)  # repairs a record lost to a crash after the last swap
            if current["version"] == version:
                return Decision(True, current.get("reason", "promoted (already the champion)")), current
        decision, metric = decide(current)
        if not decision.promote:
            return decision, current
        pointer = {"name": name, "version": version,
                   "promoted_at": clock().astimezone(dt.timezone.utc).isoformat(),
                   "reason": decision.reason, "metric": metric,
                   "previous": None if current is None else current["version"]}
        if store.write_if(key, json.dumps(pointer, indent=2).encode(), None if got is None else got[1]):
            _write_history(store, name, pointer)
            return decision, pointer
    raise RegistryError(f"champion pointer {store.uri(key)} changed {attempts} times while promoting {version}; "
                        "too many concurrent retrains of one model (set a concurrency limit on the deployment)")


def set_champion(store: Store, name: str, version: str, decision: Decision, metric: dict,
                 now: dt.datetime | None = None) -> dict:
    """Point the champion at ``version`` unconditionally (an operator's rollback, tests), by the same
    compare-and-swap as ``promote`` so it never tears a concurrent promotion; records the promotion."""
    pointer = promote(store, name, version, lambda _current: (decision, metric),
                      now=(lambda: now) if now is not None else None)[1]
    assert pointer is not None
    return pointer


def sweep_incomplete(store: Store, name: str, keep: str | None = None,
                     older_than: dt.timedelta = dt.timedelta(hours=6),
                     now: dt.datetime | None = None) -> list[str]:
    """Delete bundle folders that never got their manifest (a run died while writing them).

    Only folders whose newest file was written more than ``older_than`` ago go: a bundle a concurrent
    run is writing right now is left alone however long ago that run started (its version stamp is the
    run's start); ``keep`` is never touched. Returns the versions removed.
    """
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    base = f"{_prefix(name)}/versions/"
    files: dict[str, dict[str, dt.datetime]] = {}
    for key, written in store.list_modified(base).items():
        version = key[len(base):].split("/", 1)[0]
        files.setdefault(version, {})[key] = written
    removed = []
    for version, keys in files.items():
        if version == keep or f"{base}{version}/manifest.json" in keys:
            continue
        try:
            dt.datetime.strptime(version.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ")
        except ValueError:
            continue  # not a name this registry minted: not ours to delete
        if now - max(keys.values()) >= older_than:
            for key in keys:
                store.delete(key)
            removed.append(version)
    return removed


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
