"""Object storage behind one small interface: a local directory or S3.

Keys are always ``/``-separated and relative to the store root, so every
caller is the same code whether the root is ``./nightcast-store`` or
``s3://bucket/prefix``. Writes are atomic: a reader sees the old object or
the new one, never a partial file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class StorageError(RuntimeError):
    """A read or write against the object store failed."""


@runtime_checkable
class Store(Protocol):
    """What every step needs from object storage, and nothing more."""

    url: str

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def uri(self, key: str) -> str: ...


def safe_key_part(value: str) -> str:
    """Make an arbitrary string (a series id, a model name) safe inside an object key.

    Anything outside ``[A-Za-z0-9._-]`` becomes ``_``; ``.``/``..`` and empty
    strings cannot escape or vanish from the key.
    """
    cleaned = _UNSAFE.sub("_", value).strip("._") or "_"
    return cleaned[:128]


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid object key {key!r}")
    return key


class LocalStore:
    """A directory on the local file system used as an object store."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no object {key!r} in store {self.url}") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same-directory temp file + os.replace: atomic on POSIX and Windows.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return []
        keys = []
        for p in start.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return str(self._path(key))


class S3Store:
    """An ``s3://bucket/prefix`` store through boto3 (AWS, MinIO, moto, ...).

    Credentials, region and endpoint come from the standard ``AWS_*``
    environment (``AWS_ENDPOINT_URL`` included) unless given here.
    A single PUT is atomic in S3, so ``write_bytes`` needs no staging.
    """

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        import boto3  # imported here: the local store must not need it

        match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
        if not match:
            raise StorageError(f"not an s3:// URL: {url!r}")
        self.bucket, prefix = match.group(1), match.group(2).strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = url.rstrip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self._s3 = boto3.client("s3", endpoint_url=self.endpoint_url)

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self._s3.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"no object {key!r} in store {self.url}") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def open_store(url: str, endpoint_url: str | None = None) -> Store:
    """Open the store a URL names: ``s3://bucket/prefix`` or a local directory."""
    if url.startswith("s3://"):
        return S3Store(url, endpoint_url=endpoint_url)
    if "://" in url and not url.startswith("file://"):
        raise StorageError(f"unsupported store URL {url!r}: use a local path or s3://bucket/prefix")
    return LocalStore(url.removeprefix("file://"))
