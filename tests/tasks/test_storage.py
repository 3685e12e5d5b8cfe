import pytest

from tasks.storage import LocalStore, S3Store, StorageError, open_store, safe_key_part


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


def test_local_store_roundtrip(tmp_path):
    _roundtrip(open_store(str(tmp_path / "store")))


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.write_bytes("k.txt", b"good")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("tasks.storage.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes("k.txt", b"partial")
    assert store.read_bytes("k.txt") == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["k.txt"]


def test_s3_store_roundtrip_against_moto_server(s3_env):
    store = open_store(f"s3://{s3_env}/some/prefix")
    assert isinstance(store, S3Store)
    _roundtrip(store)
    assert store.uri("x/y") == f"s3://{s3_env}/some/prefix/x/y"


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", ""])
def test_keys_cannot_escape_the_root(tmp_path, key):
    with pytest.raises(StorageError):
        LocalStore(tmp_path).write_bytes(key, b"x")


def test_series_ids_are_sanitised_for_keys():
    assert safe_key_part("../../etc/passwd") == "etc_passwd"
    assert safe_key_part("site 1/ä") == "site_1"
    assert safe_key_part("..") == "_"
    assert "/" not in safe_key_part("a/b\\c")


def test_unknown_scheme_is_rejected():
    with pytest.raises(StorageError, match="unsupported"):
        open_store("gs://bucket")
