import datetime as dt
import hashlib
import multiprocessing
import os
import re
import string

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from nightcast.tasks.ops.storage import (LocalStore, S3Settings, S3Store, StorageError, open_store, safe_key_part)
from tests.conftest import fork_child


_TOKEN = re.compile(r"%([0-9A-F]{2})|(.)", re.DOTALL)


def unsafe_key_part(part: str) -> str:
    """The string ``safe_key_part`` encoded (the test's own decoder: that every encoding decodes to one
    string proves two names never share a key); ``ValueError`` for anything it cannot have written."""
    if "~" in part:
        raise ValueError(f"key part {part!r} was shortened with a hash and cannot be decoded")
    try:
        raw = bytes(int(esc, 16) if esc else ord(ch) for esc, ch in _TOKEN.findall(part))
        value = raw.decode("utf-8", "surrogatepass")
    except ValueError:
        value = ""
    if not value or safe_key_part(value) != part:  # only the one canonical encoding decodes
        raise ValueError(f"{part!r} is not a safe_key_part encoding")
    return value


def _roundtrip(store) -> None:
    store.write_bytes("a/b/c.json", b"one")
    store.write_bytes("a/b/c.json", b"two")  # replace
    store.write_bytes("a/d.bin", b"\x00\x01")
    assert store.read_bytes("a/b/c.json") == b"two"
    assert store.exists("a/d.bin") and not store.exists("a/nope")
    assert store.list("a/") == ["a/b/c.json", "a/d.bin"]
    assert store.list("a/b") == ["a/b/c.json"]
    store.delete("a/d.bin")
    assert store.list("a/") == ["a/b/c.json"]
    with pytest.raises(FileNotFoundError, match="a/missing"):
        store.read_bytes("a/missing")


def _file_roundtrip(store, tmp_path) -> None:
    data = os.urandom(9 << 20)  # above boto3's 8 MiB multipart threshold: S3 uploads it in parts
    (tmp_path / "src.bin").write_bytes(data)
    store.upload_from("f/big.bin", tmp_path / "src.bin")
    store.download_to("f/big.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data and store.read_bytes("f/big.bin") == data
    assert store.list("f/") == ["f/big.bin"]
    with pytest.raises(FileNotFoundError, match="f/missing"):
        store.download_to("f/missing", tmp_path / "none.bin")
    with pytest.raises(FileNotFoundError) as missing_folder:  # a local folder that is not there: not the store's
        store.download_to("f/big.bin", tmp_path / "no-such-folder" / "out.bin")
    assert "in store" not in str(missing_folder.value)


def test_local_store_roundtrip(tmp_path):
    _roundtrip(open_store(str(tmp_path / "store")))
    _file_roundtrip(open_store(str(tmp_path / "store")), tmp_path)


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.write_bytes("k.txt", b"good")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("nightcast.tasks.ops.storage.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes("k.txt", b"partial")
    src = tmp_path.parent / f"{tmp_path.name}-src.bin"
    src.write_bytes(b"partial")
    with pytest.raises(OSError, match="disk full"):
        store.upload_from("k.txt", src)
    assert store.read_bytes("k.txt") == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["k.txt"]


def test_s3_store_roundtrip_against_moto_server(s3_env):
    store = open_store(f"s3://{s3_env}/some/prefix")
    assert isinstance(store, S3Store)
    _roundtrip(store)
    assert store.uri("x/y") == f"s3://{s3_env}/some/prefix/x/y"


def test_s3_file_transfers_against_moto_server(s3_env, tmp_path):
    _file_roundtrip(open_store(f"s3://{s3_env}/files"), tmp_path)
    (tmp_path / "small.bin").write_bytes(b"x")
    with pytest.raises(StorageError, match=f"s3://{s3_env}-missing/pre/a/b failed"):
        S3Store(f"s3://{s3_env}-missing/pre").upload_from("a/b", tmp_path / "small.bin")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", ""])
def test_keys_cannot_escape_the_root(tmp_path, key):
    with pytest.raises(StorageError):
        LocalStore(tmp_path).write_bytes(key, b"x")


def test_unknown_scheme_is_rejected():
    with pytest.raises(StorageError, match="unsupported"):
        open_store("gs://bucket")


# --- injective key parts ---------------------------------------------------------------

_NAMES = ["lstm", "lstm_", "lstm.", "lstm-", "_lstm", "LSTM", "a b", "a_b", "a%20b", "a%b", "a/b", "a\\b",
          ".", "..", "...", ".x", "%2E", "~", "a~b", "café", "cafe\u0301", "日本", "🙂", "\x00", "\n",
          "x" * 300, "x" * 299 + "y", "é" * 200, "é" * 199 + "e", "../../etc/passwd"]
_SAFE_CHARS = set(string.ascii_letters + string.digits + "._-%~")


def test_distinct_names_get_distinct_key_parts():
    parts = [safe_key_part(n) for n in _NAMES]
    assert len(set(parts)) == len(_NAMES)


@pytest.mark.parametrize("name", _NAMES)
def test_key_parts_are_safe_and_reversible(name):
    part = safe_key_part(name)
    assert set(part) <= _SAFE_CHARS and "/" not in part
    assert part not in (".", "..") and not part.startswith(".")
    assert 0 < len(part) <= 128
    if "~" in part:  # shortened: a prefix of the encoding and a hash of the name
        assert part.endswith("~" + hashlib.sha256(name.encode()).hexdigest()[:16])
        with pytest.raises(ValueError, match="hash"):
            unsafe_key_part(part)
    else:
        assert unsafe_key_part(part) == name


def test_key_part_encoding_is_percent_escaping():
    assert safe_key_part("lstm_") == "lstm_" and safe_key_part("lstm") == "lstm"
    assert safe_key_part("a b") == "a%20b"
    assert safe_key_part("a%20b") == "a%2520b"
    assert safe_key_part("café") == "caf%C3%A9"
    assert safe_key_part("..") == "%2E."
    assert safe_key_part("../../etc/passwd") == "%2E.%2F..%2Fetc%2Fpasswd"
    assert safe_key_part("x" * 128) == "x" * 128  # the longest part kept whole
    assert len(safe_key_part("x" * 129)) == 128
    with pytest.raises(ValueError):
        safe_key_part("")


def test_long_part_never_ends_on_half_an_escape():
    part = safe_key_part("a" + "é" * 100)  # escapes start at odd offsets: the cut falls inside one
    head = part.split("~")[0]
    assert all(head[i + 1 : i + 3] in ("C3", "A9") for i, c in enumerate(head) if c == "%")
    assert len(head[head.rfind("%"):]) == 3


@pytest.mark.parametrize("bad", ["%41", "%2e", ".x", "%", "%zz", "é", "a/b", ""])
def test_only_canonical_encodings_decode(bad):
    with pytest.raises(ValueError):
        unsafe_key_part(bad)


def test_hive_readers_see_the_original_name(tmp_path):
    """polars decodes %XX in hive partition values: model=a%20b reads back as "a b"."""
    import io

    import polars as pl

    store, names = LocalStore(tmp_path), ["lstm", "lstm_", "a b", "a%b", "café", ".x"]
    for name in names:
        buf = io.BytesIO()
        pl.DataFrame({"v": [1]}).write_parquet(buf)
        store.write_bytes(f"forecasts/model={safe_key_part(name)}/as_of=2026-01-01/f.parquet", buf.getvalue())
    frame = pl.read_parquet(tmp_path / "forecasts", hive_partitioning=True)
    assert sorted(frame["model"].to_list()) == sorted(names)


# --- compare-and-swap --------------------------------------------------------------------

def _cas_contract(store) -> None:
    assert store.read_versioned("p/champion.json") is None
    assert store.write_if("p/champion.json", b"v1", None)
    assert not store.write_if("p/champion.json", b"other", None)  # exists already
    data, token = store.read_versioned("p/champion.json")
    assert data == b"v1"
    assert store.write_if("p/champion.json", b"v2", token)
    assert not store.write_if("p/champion.json", b"stale", token)  # token moved on
    assert store.read_bytes("p/champion.json") == b"v2"
    assert store.read_versioned("p/champion.json")[1] != token
    assert not store.write_if("p/gone.json", b"x", token)  # expected an object that is not there
    assert not store.exists("p/gone.json")
    assert store.list("p/") == ["p/champion.json"]  # no lock or temp files listed


def test_local_compare_and_swap(tmp_path):
    _cas_contract(LocalStore(tmp_path))


def test_s3_compare_and_swap_against_moto_server(s3_env):
    _cas_contract(open_store(f"s3://{s3_env}/cas"))


def test_s3_stale_etag_and_existing_key_leave_the_object_unchanged(s3_env):
    store = S3Store(f"s3://{s3_env}")
    store.write_bytes("ptr", b"one")
    _, etag = store.read_versioned("ptr")
    store.write_bytes("ptr", b"two")  # someone else moved it
    assert store.write_if("ptr", b"mine", etag) is False
    assert store.write_if("ptr", b"mine", None) is False
    assert store.read_bytes("ptr") == b"two"


def _race_once(root, token, name, barrier, results):
    store = LocalStore(root)
    barrier.wait()
    results.put((name, store.write_if("ptr", name.encode(), token)))


def _count_up(root, times, barrier, results):
    store = LocalStore(root)
    barrier.wait()
    tries = 0
    for _ in range(times):
        while True:
            tries += 1
            data, token = store.read_versioned("counter")
            if store.write_if("counter", str(int(data) + 1).encode(), token):
                break
    results.put(tries)


def _run(target, n, args):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=fork_child(target), args=(*args(i), barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return out


def test_local_write_if_race_between_processes_has_one_winner(tmp_path):
    store = LocalStore(tmp_path)
    store.write_bytes("ptr", b"start")
    token = store.read_versioned("ptr")[1]
    out = _run(_race_once, 4, lambda i: (str(tmp_path), token, f"p{i}"))
    winners = [name for name, won in out if won]
    assert len(winners) == 1
    assert store.read_bytes("ptr") == winners[0].encode()


def test_local_compare_and_swap_loses_no_update_across_processes(tmp_path):
    store = LocalStore(tmp_path)
    assert store.write_if("counter", b"0", None)
    tries = _run(_count_up, 3, lambda i: (str(tmp_path), 40))
    assert store.read_bytes("counter") == b"120"  # a lost update would leave less
    assert sum(tries) >= 120


# --- S3 settings: retries, timeouts, the 403 rule, wrapped errors ------------------------

def test_s3_client_uses_standard_retries_and_timeouts(s3_env, monkeypatch):
    for var in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    cfg = S3Store(f"s3://{s3_env}")._s3.meta.config
    assert cfg.retries == {"mode": "standard", "total_max_attempts": S3Settings().max_attempts}
    assert (cfg.connect_timeout, cfg.read_timeout) == (5.0, 30.0)
    monkeypatch.setenv("NIGHTCAST_S3_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("NIGHTCAST_S3_CONNECT_TIMEOUT_S", "2")
    cfg = S3Store(f"s3://{s3_env}")._s3.meta.config
    assert cfg.retries["total_max_attempts"] == 4 and cfg.connect_timeout == 2.0


def test_s3_client_sends_checksums_only_when_required_unless_told(s3_env, monkeypatch):
    """botocore >= 1.36 sends CRC checksum headers on every PUT, which several S3-compatible servers
    reject: nightcast asks for them only when an operation requires them; the AWS variable wins."""
    for var in ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    cfg = S3Store(f"s3://{s3_env}")._s3.meta.config
    assert (cfg.request_checksum_calculation, cfg.response_checksum_validation) == ("when_required",) * 2
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
    cfg = S3Store(f"s3://{s3_env}")._s3.meta.config
    assert (cfg.request_checksum_calculation, cfg.response_checksum_validation) == ("when_supported",
                                                                                    "when_required")
    store = S3Store(f"s3://{s3_env}")
    store.write_bytes("k.json", b"{}")  # and the endpoint takes the writes either way
    assert store.read_bytes("k.json") == b"{}"


def test_s3_client_keeps_the_users_aws_retry_settings(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("NIGHTCAST_S3_MAX_ATTEMPTS", "7")
    assert S3Store(f"s3://{s3_env}")._s3.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 2}


def _denied(store, *operations):
    stub = Stubber(store._s3)
    for op in operations:
        code = "403" if op == "head_object" else "AccessDenied"
        stub.add_client_error(op, service_error_code=code, http_status_code=403)
    return stub


def test_403_reads_as_missing_on_read_if_exists_paths_when_configured(s3_env, monkeypatch):
    monkeypatch.setenv("NIGHTCAST_S3_MISSING_ON_403", "true")  # credentials without s3:ListBucket
    store = S3Store(f"s3://{s3_env}/p")
    with _denied(store, "head_object", "get_object", "get_object"):
        assert store.exists("k") is False
        assert store.read_versioned("k") is None
        with pytest.raises(FileNotFoundError, match="'k'"):
            store.read_bytes("k")
    with _denied(store, "put_object"), pytest.raises(StorageError, match="AccessDenied"):
        store.write_bytes("k", b"x")  # a write is never "missing"


def test_403_is_an_error_by_default(s3_env, monkeypatch):
    """A permission error must not pass for an absent object (a tuned configuration silently ignored)."""
    monkeypatch.delenv("NIGHTCAST_S3_MISSING_ON_403", raising=False)
    store = S3Store(f"s3://{s3_env}/p")
    with _denied(store, "get_object", "head_object"):
        with pytest.raises(StorageError, match=f"s3://{s3_env}/p/k failed: AccessDenied") as info:
            store.read_versioned("k")
        assert isinstance(info.value.__cause__, ClientError)
        with pytest.raises(StorageError, match="403"):
            store.exists("k")


def test_s3_errors_name_the_bucket_key_and_code(s3_env):
    store = S3Store(f"s3://{s3_env}-missing/pre")
    with pytest.raises(StorageError, match=f"s3://{s3_env}-missing/pre/a/b failed: NoSuchBucket") as info:
        store.read_bytes("a/b")
    assert isinstance(info.value.__cause__, ClientError)
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.list("a/")


def test_list_modified_gives_each_key_its_write_time_on_both_stores(tmp_path, s3_env):
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    for store in (LocalStore(tmp_path), S3Store(f"s3://{s3_env}/lm")):
        store.write_bytes("v/a.bin", b"1")
        store.write_bytes("v/b/c.bin", b"2")
        got = store.list_modified("v/")
        assert list(got) == store.list("v/") == ["v/a.bin", "v/b/c.bin"]
        assert all(before <= t <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5) for t in got.values())


def test_conditional_writes_are_probed_once_and_the_probe_cleaned_up(s3_env):
    import nightcast.tasks.ops.storage as storage

    store = S3Store(f"s3://{s3_env}/p")
    assert store.conditional_writes() is True  # moto honours If-None-Match
    assert store.list("_nightcast/") == []
    assert storage._CONDITIONAL_WRITES[(store.endpoint_url, s3_env)] is True


def _ignoring_conditions(store: S3Store) -> None:
    """Make ``store``'s client behave like an endpoint that ignores If-Match / If-None-Match (s3rver does;
    the slow suite runs the real one)."""
    put = store._s3.put_object

    def put_object(**kwargs):
        kwargs.pop("IfMatch", None)
        kwargs.pop("IfNoneMatch", None)
        return put(**kwargs)

    store._s3.put_object = put_object


def test_an_endpoint_that_ignores_conditions_refuses_compare_and_swap(s3_env, monkeypatch):
    from nightcast.tasks.ops.storage import ConditionalWritesUnsupported, require_conditional_writes

    monkeypatch.setattr("nightcast.tasks.ops.storage._CONDITIONAL_WRITES", {})
    store = S3Store(f"s3://{s3_env}/p")
    _ignoring_conditions(store)
    store.write_bytes("ptr", b"theirs")
    with pytest.raises(ConditionalWritesUnsupported, match=r"endpoint http://127\.0\.0\.1:\d+ \(bucket .*ignores "
                                                          r"conditional writes.*NIGHTCAST_S3_SINGLE_WRITER=true"):
        store.write_if("ptr", b"mine", None)
    assert store.read_bytes("ptr") == b"theirs"  # nothing overwritten
    with pytest.raises(ConditionalWritesUnsupported):
        require_conditional_writes(store)
    require_conditional_writes(LocalStore("/tmp"))  # a local store always has them
    monkeypatch.setenv("NIGHTCAST_S3_SINGLE_WRITER", "true")  # the operator accepts last-writer-wins
    single = S3Store(f"s3://{s3_env}/p")
    _ignoring_conditions(single)
    assert single.write_if("ptr", b"mine", None) is True and single.read_bytes("ptr") == b"mine"
