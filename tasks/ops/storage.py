"""Object storage behind one small interface: a local directory or S3.

Keys are always ``/``-separated and relative to the store root, so every
caller is the same code whether the root is ``./nightcast-store`` or
``s3://bucket/prefix``. Writes are atomic: a reader sees the old object or
the new one, never a partial file. ``read_versioned`` + ``write_if`` give a
compare-and-swap for the few objects several runs move (the champion pointer).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import string
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Literal, Protocol, runtime_checkable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_SAFE = frozenset(string.ascii_letters + string.digits + "._-")
_MAX_KEY_PART = 128
_HASH_CHARS = 16


class ConditionalWritesUnsupported(RuntimeError):
    """The S3 endpoint ignores ``If-Match`` / ``If-None-Match``: a compare-and-swap would overwrite blindly."""


class StorageError(RuntimeError):
    """A read or write against the object store failed.

    When it wraps an S3 or network error, that error is ``__cause__``: the retry
    policy (``nightcast.flows.runtime.is_transient_error``) reads the chain, so a wrapped
    connection error is retried and a wrapped ``AccessDenied`` is not.
    """


@runtime_checkable
class Store(Protocol):
    """What every step needs from object storage, and nothing more."""

    url: str

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def upload_from(self, key: str, path: Path) -> None:
        """Write the object ``key`` from a local file, atomically, without holding the file in memory."""

    def download_to(self, key: str, path: Path) -> None:
        """Copy the object ``key`` to a local file, without holding it in memory; ``FileNotFoundError`` when
        it does not exist."""

    def read_versioned(self, key: str) -> tuple[bytes, str] | None: ...

    def write_if(self, key: str, data: bytes, expected: str | None) -> bool: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def list_modified(self, prefix: str = "") -> dict[str, dt.datetime]: ...

    def delete(self, key: str) -> None: ...

    def uri(self, key: str) -> str: ...


def safe_key_part(value: str) -> str:
    """Encode an arbitrary string (a model name, a series id) as one object-key part.

    Injective, so two names never share a key: ``[A-Za-z0-9._-]`` stays as it is,
    every other character becomes ``%XX`` per UTF-8 byte (uppercase hex, ``%``
    included), as Hive partition values are escaped, so polars reads
    ``model=a%20b`` back as ``a b``. A leading ``.`` is encoded too, so ``.``
    and ``..`` cannot appear; nothing is stripped. An encoding over 128
    characters keeps its first 111 and ends in ``~`` + 16 hex digits of the
    value's SHA-256 (``~`` is otherwise always encoded, so the two forms cannot
    meet). Valid model names (``[A-Za-z0-9][A-Za-z0-9._-]*``, 64 at most) are
    their own encoding. ``unsafe_key_part`` reverses it.
    """
    if not value:
        raise ValueError("an empty string cannot be an object key part")
    raw = value.encode("utf-8", "surrogatepass")
    encoded = "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in raw)
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if len(encoded) <= _MAX_KEY_PART:
        return encoded
    head = encoded[: _MAX_KEY_PART - 1 - _HASH_CHARS]
    if (cut := head.rfind("%", len(head) - 2)) != -1:  # never end on half an escape
        head = head[:cut]
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]}"


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid object key {key!r}")
    return key


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable across a power cut; directories cannot be opened on Windows.
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
        self._replace(key, lambda fh: fh.write(data))

    def upload_from(self, key: str, path: Path) -> None:
        with open(path, "rb") as src:
            self._replace(key, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))

    def download_to(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise FileNotFoundError(f"no object {key!r} in store {self.url}")
        shutil.copyfile(source, path)

    def _replace(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        """Write the object through ``fill`` into a same-directory temp file, then ``os.replace`` it in:
        atomic on POSIX and Windows (a reader sees the old object or the whole new one)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object and its version token (SHA-256 of the content), or None when it does not exist.

        Writes replace the file atomically, so the content read is one whole
        version and its hash names exactly that version.
        """
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def write_if(self, key: str, data: bytes, expected: str | None) -> bool:
        """Write only if the object's token is still ``expected`` (None: only if it does not exist).

        Returns True when written, False on a conflict (nothing written). The
        compare and the atomic replace run under an exclusive ``flock`` on a
        hidden lock file beside the object (``.<name>.lock``, kept, never listed),
        so ``write_if`` calls are atomic with respect to each other across
        threads and processes on one machine (POSIX; not over NFS). A plain
        ``write_bytes`` or ``delete`` of the same key does not take the lock:
        objects moved by compare-and-swap must only be written with ``write_if``.
        The token is a content hash, so a swap back to identical bytes counts as
        unchanged (as an S3 ETag does).
        """
        try:
            import fcntl
        except ImportError as exc:  # Windows
            raise StorageError("conditional writes on a local store need POSIX file locks") from exc
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = self.read_versioned(key)
            if (current[1] if current else None) != expected:
                return False
            self.write_bytes(key, data)
            return True
        finally:
            os.close(fd)  # releases the lock

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self._files(prefix))

    def list_modified(self, prefix: str = "") -> dict[str, dt.datetime]:
        """Every key under ``prefix`` with the time it was last written (UTC)."""
        return {key: dt.datetime.fromtimestamp(p.stat().st_mtime, dt.timezone.utc)
                for key, p in sorted(self._files(prefix).items())}

    def _files(self, prefix: str) -> dict[str, Path]:
        base = self.root / prefix if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return {}
        found = {}
        for p in start.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found[key] = p
        return found

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return str(self._path(key))


class S3Settings(BaseSettings):
    """How ``S3Store`` talks to S3, from ``NIGHTCAST_S3_*`` variables when a store is opened.

    The retry budget: botocore's ``standard`` mode retries connection errors,
    timeouts, throttling and 5xx inside each request (``max_attempts`` in all,
    full-jitter backoff ``rand() * min(0.05 s * 2**i, 20 s)``, 1 s base for
    throttling: about 13 s on average for 10 attempts, but it can be near 0).
    Above it, every I/O step retries 4 times after at least 33 s in all
    (``nightcast.flows.runtime.RETRY_DELAYS_S``), so an S3 outage of 30 s never fails a
    step, and one of about a minute and a half usually does not.
    ``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` (or ``retry_mode`` /
    ``max_attempts`` in the AWS profile), when set, win over these.
    """

    model_config = SettingsConfigDict(env_prefix="NIGHTCAST_S3_", extra="ignore")

    max_attempts: int = Field(10, ge=1, description="attempts per S3 request, the first included")
    connect_timeout_s: float = Field(5.0, gt=0, description="seconds to open a connection")
    read_timeout_s: float = Field(30.0, gt=0, description="seconds to wait for the next bytes of a response")
    checksums: Literal["when_required", "when_supported"] = Field(
        "when_required",
        description="botocore's request_checksum_calculation and response_checksum_validation: "
                    "'when_required' sends no CRC checksum headers the operation does not need, which several "
                    "S3-compatible servers reject (botocore >= 1.36 sends them by default: 'when_supported'); "
                    "AWS_REQUEST_CHECKSUM_CALCULATION / AWS_RESPONSE_CHECKSUM_VALIDATION, when set, win",
    )
    missing_on_403: bool = Field(
        False,
        description="read a 403 on a read-if-exists path as 'no such object': without s3:ListBucket, "
                    "S3 answers 403 AccessDenied, not 404, for a key that does not exist. Off by default: "
                    "a real permission error (a tuned configuration or champion pointer the worker may not "
                    "read) must fail loudly, not pass for an absent object; turn it on only for credentials "
                    "that lack s3:ListBucket",
    )
    single_writer: bool = Field(
        False,
        description="accept an endpoint that ignores conditional writes (If-Match / If-None-Match): the "
                    "champion pointer then moves last-writer-wins, safe only when one run at a time can promote "
                    "(the nightly deployment's concurrency limit, no CLI retrain beside it)",
    )


_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED_CODES = frozenset({"403", "AccessDenied"})
_CONDITIONAL_WRITES: dict[tuple[str | None, str], bool] = {}
"""(endpoint, bucket) -> whether conditional PUTs are honoured, probed once per process."""


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or type(exc).__name__)


def _is_conflict(exc: BaseException) -> bool:
    """A conditional PUT refused: 412 PreconditionFailed, 409 ConditionalRequestConflict, or the object gone."""
    status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _error_code(exc) in _CONFLICT_CODES or status == 412


class S3Store:
    """An ``s3://bucket/prefix`` store through boto3 (AWS, MinIO, moto, ...).

    Credentials, region and endpoint come from the standard ``AWS_*``
    environment (``AWS_ENDPOINT_URL`` included) unless given here; timeouts,
    retries and the 403 rule from ``S3Settings``. A single PUT is atomic in S3,
    so ``write_bytes`` needs no staging. Every S3 or network failure comes out as
    a ``StorageError`` naming the operation, the ``s3://`` object and the S3
    error code, with the original error as ``__cause__``.
    """

    def __init__(self, url: str, endpoint_url: str | None = None,
                 settings: S3Settings | None = None) -> None:
        import boto3  # imported here: the local store must not need it
        import botocore.session
        from botocore.config import Config

        match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
        if not match:
            raise StorageError(f"not an s3:// URL: {url!r}")
        self.bucket, prefix = match.group(1), match.group(2).strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = url.rstrip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.settings = settings or S3Settings()
        core = botocore.session.Session()
        retries: dict[str, Any] = {}
        if not (os.environ.get("AWS_RETRY_MODE") or core.get_scoped_config().get("retry_mode")):
            retries["mode"] = "standard"
        if core.get_config_variable("max_attempts") is None:  # AWS_MAX_ATTEMPTS or the profile
            retries["total_max_attempts"] = self.settings.max_attempts
        checksums = {name: self.settings.checksums for name in ("request_checksum_calculation",
                                                                 "response_checksum_validation")
                     if not (os.environ.get(f"AWS_{name.upper()}") or core.get_scoped_config().get(name))}
        config = Config(retries=retries or None, connect_timeout=self.settings.connect_timeout_s,
                        read_timeout=self.settings.read_timeout_s, **checksums)
        # A session per store: clients from the shared default session are not thread-safe to create.
        self._s3 = boto3.session.Session(botocore_session=core).client(
            "s3", endpoint_url=self.endpoint_url, config=config)

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    @contextmanager
    def _errors(self, op: str, key: str = "") -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            where = f"s3://{self.bucket}/{self.prefix}{key or ''}"
            raise StorageError(f"S3 {op} {where} failed: {_error_code(exc)}: {exc}") from exc

    def _missing(self, exc: BaseException) -> bool:
        code = _error_code(exc)
        return code in _MISSING_CODES or (self.settings.missing_on_403 and code in _DENIED_CODES)

    def _get(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        with self._errors("get", key):
            try:
                response = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if self._missing(exc):
                    return None
                raise
            return response["Body"].read(), response["ETag"]

    def read_bytes(self, key: str) -> bytes:
        """The object's content; ``FileNotFoundError`` when it does not exist (or, see ``S3Settings``, a 403)."""
        found = self._get(key)
        if found is None:
            raise FileNotFoundError(f"no object {key!r} in store {self.url}")
        return found[0]

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object and its ETag (the token for ``write_if``), or None when it does not exist."""
        return self._get(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors("put", key):
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload_from(self, key: str, path: Path) -> None:
        """A file of any size: boto3's managed transfer (multipart above 8 MiB). The object appears only when
        the upload completes, whole (a multipart upload's parts are invisible until it is completed)."""
        from boto3.exceptions import S3UploadFailedError

        with self._errors("put", key):
            try:
                self._s3.upload_file(str(path), self.bucket, self._key(key))
            except S3UploadFailedError as exc:
                where = f"s3://{self.bucket}/{self._key(key)}"
                raise StorageError(f"S3 put {where} failed: {exc}") from exc

    def download_to(self, key: str, path: Path) -> None:
        from boto3.exceptions import RetriesExceededError
        from botocore.exceptions import ClientError

        with self._errors("get", key):
            try:
                self._s3.download_file(self.bucket, self._key(key), str(path))
            except ClientError as exc:
                if self._missing(exc):
                    raise FileNotFoundError(f"no object {key!r} in store {self.url}") from exc
                raise
            except RetriesExceededError as exc:  # the managed transfer's own retries ran out
                raise StorageError(f"S3 get s3://{self.bucket}/{self._key(key)} failed: {exc}") from exc

    def conditional_writes(self) -> bool:
        """Whether the endpoint honours conditional PUTs, probed once per endpoint and bucket in a process:
        a PUT with ``If-None-Match: *`` onto an object that exists must be refused. The probe object
        (``_nightcast/probe/<uuid>`` under the prefix) is deleted afterwards."""
        import uuid

        from botocore.exceptions import ClientError

        cache_key = (self.endpoint_url, self.bucket)
        if cache_key in _CONDITIONAL_WRITES:
            return _CONDITIONAL_WRITES[cache_key]
        key = f"_nightcast/probe/{uuid.uuid4().hex}"
        with self._errors("conditional-write probe", key):
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=b"1")
            try:
                self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=b"2", IfNoneMatch="*")
                honoured = False
            except ClientError as exc:
                if not _is_conflict(exc):
                    raise
                honoured = True
            finally:
                self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))
        _CONDITIONAL_WRITES[cache_key] = honoured
        return honoured

    def require_conditional_writes(self) -> None:
        if self.settings.single_writer or self.conditional_writes():
            return
        raise ConditionalWritesUnsupported(
            f"the S3 endpoint {self.endpoint_url or 'of AWS'} (bucket {self.bucket}) ignores conditional writes "
            "(a PUT with If-None-Match: * onto an existing object was not refused), so the champion's "
            "compare-and-swap would overwrite blindly; use an endpoint that honours them (AWS S3, MinIO, moto), "
            "or set NIGHTCAST_S3_SINGLE_WRITER=true if only one run at a time can promote")

    def write_if(self, key: str, data: bytes, expected: str | None) -> bool:
        """Write only if the object's ETag is still ``expected`` (None: only if it does not exist).

        Refuses (``ConditionalWritesUnsupported``) on an endpoint that ignores the conditions, found by
        ``conditional_writes``, unless ``S3Settings.single_writer`` accepts last-writer-wins.

        An S3 conditional PUT (``IfMatch`` / ``IfNoneMatch="*"``): S3 itself
        decides, atomically, against every other writer. Returns True when
        written, False on a conflict (412 PreconditionFailed, 409
        ConditionalRequestConflict, or the object gone), when nothing was written.
        One caveat: if a PUT's response is lost and botocore retries it, the retry
        of a write that did land sees the new ETag and reports False; a caller
        that must know re-reads and compares the content with what it wrote.
        """
        from botocore.exceptions import ClientError

        self.require_conditional_writes()
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        with self._errors("conditional put", key):
            try:
                self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            except ClientError as exc:
                if _is_conflict(exc):
                    return False
                raise
        return True

    def exists(self, key: str) -> bool:
        """Whether the object exists; a 403 is an error unless ``missing_on_403`` is on."""
        from botocore.exceptions import ClientError

        with self._errors("head", key):
            try:
                self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if self._missing(exc):
                    return False
                raise

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self.list_modified(prefix))

    def list_modified(self, prefix: str = "") -> dict[str, dt.datetime]:
        """Every key under ``prefix`` with its LastModified (UTC), from the same listing."""
        found: dict[str, dt.datetime] = {}
        with self._errors("list", prefix):
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                found.update((obj["Key"][len(self.prefix):], obj["LastModified"].astimezone(dt.timezone.utc))
                             for obj in page.get("Contents", []))
        return dict(sorted(found.items()))

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
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


def require_conditional_writes(store: Store) -> None:
    """Raise ``ConditionalWritesUnsupported`` when ``store`` is an S3 endpoint that ignores conditional writes
    (and ``NIGHTCAST_S3_SINGLE_WRITER`` does not accept that); a local store always has them."""
    check = getattr(store, "require_conditional_writes", None)
    if check is not None:
        check()
