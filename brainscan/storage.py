"""Model repositories in S3-compatible object storage, as Triton reads them.

Triton takes ``s3://bucket/path`` (AWS, region from AWS_DEFAULT_REGION) or
``s3://http://host:port/bucket/path`` / ``s3://https://host:port/bucket/path`` (any
S3-compatible endpoint: MinIO, Ceph, …); ``s3://host:port/bucket/path`` is read as http.
Credentials come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN), for Triton and for this module alike: never from a command line.
boto3 (the ``s3`` extra) is needed only to upload and to check a repository before serving.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from brainscan.errors import BrainscanError

S3 = "s3://"


class StorageError(BrainscanError, RuntimeError):
    """Object storage is unreachable, refuses the credentials, or holds no repository there."""


@dataclass(frozen=True)
class S3Location:
    endpoint: str | None  # http(s)://host:port, or None for AWS itself
    bucket: str
    prefix: str  # without leading or trailing slash

    @property
    def uri(self) -> str:
        """The form Triton's --model-repository takes."""
        host = f"{self.endpoint}/" if self.endpoint else ""
        return f"{S3}{host}{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative


def is_s3(location) -> bool:
    return str(location).startswith(S3)


def parse_s3(uri: str) -> S3Location:
    if not is_s3(uri):
        raise StorageError(f"{uri} is not an s3:// location")
    rest = uri[len(S3) :]
    endpoint = None
    for scheme in ("http://", "https://"):
        if rest.startswith(scheme):
            host, _, rest = rest[len(scheme) :].partition("/")
            endpoint = f"{scheme}{host}"
            break
    else:
        first, _, after = rest.partition("/")
        if ":" in first:  # host:port without a scheme, as Triton reads it
            endpoint, rest = f"http://{first}", after
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket (write s3://[http(s)://host:port/]bucket/path)")
    return S3Location(endpoint, bucket, prefix.strip("/"))


def _client(location: S3Location):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StorageError(
            "object storage needs boto3: pip install '.[s3]' in the brainscan checkout (make demo and make test do)"
        ) from None
    return boto3.client(
        "s3",
        endpoint_url=location.endpoint,
        config=Config(retries={"max_attempts": 3}, connect_timeout=10, read_timeout=60),
    )


def _failure(location: S3Location, exc: Exception) -> StorageError:
    text = str(exc)
    if "credentials" in text.lower():
        text += " (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    return StorageError(f"{location.uri}: {text}")


def upload(folder: Path, uri: str, only: Callable[[str], bool] | None = None) -> list[str]:
    """Copy the files of ``folder`` (those whose relative path ``only`` accepts, default all)
    under ``uri``; returns the keys written. Configs go last, so a server polling the bucket
    never sees a model whose config exists but whose weights do not yet."""
    location = parse_s3(uri)
    client = _client(location)
    folder = Path(folder)
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
        key=lambda p: (p.name == "config.pbtxt", str(p)),
    )
    written = []
    try:
        for path in files:
            relative = path.relative_to(folder).as_posix()
            if only is None or only(relative):
                client.upload_file(str(path), location.bucket, location.key(relative))
                written.append(location.key(relative))
    except Exception as exc:  # botocore raises ClientError, EndpointConnectionError, NoCredentialsError…
        raise _failure(location, exc) from None
    return written


def _keys(client, location: S3Location) -> list[str]:
    """Every object key under the location's prefix, relative to it."""
    prefix = f"{location.prefix}/" if location.prefix else ""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix)
    return [
        item["Key"][len(prefix) :]
        for page in pages
        for item in page.get("Contents", [])
        if not item["Key"].endswith("/")
    ]


def download(uri: str, folder: Path, only: Callable[[str], bool] | None = None, placeholders: bool = False) -> Path:
    """Copy the objects under ``uri`` (those whose relative path ``only`` accepts, default
    all) into ``folder``; with ``placeholders`` the others become empty files, so the layout
    is complete without the weights. Raises StorageError when nothing is there."""
    location = parse_s3(uri)
    client = _client(location)
    folder = Path(folder)
    try:
        keys = _keys(client, location)
        for relative in keys:
            target = folder / relative
            if not target.resolve().is_relative_to(folder.resolve()):
                raise StorageError(f"{location.uri}: object {relative!r} would land outside {folder}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if only is None or only(relative):
                client.download_file(location.bucket, location.key(relative), str(target))
            elif placeholders:
                target.touch()
    except StorageError:
        raise
    except Exception as exc:
        raise _failure(location, exc) from None
    if not keys:
        raise StorageError(
            f"{location.uri} holds no objects: upload a repository with `brainscan export upload DIR {location.uri}`"
        )
    return folder


# objects read whole into a skeleton: the configs, and the engines' records (a few kB each)
READ_WHOLE = ("config.pbtxt", ".json")


def skeleton(uri: str) -> Path:
    """A local folder mirroring the repository at ``uri``: configs and engine records with
    their content, every other object as an empty file, so the local checks (configs parse,
    the ensemble is wired, each model's files are there, engines fit the server) run before
    a server is started, without downloading weights."""
    root = Path(tempfile.mkdtemp(prefix="brainscan-s3-"))
    try:
        return download(uri, root, only=lambda relative: relative.endswith(READ_WHOLE), placeholders=True)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


@contextlib.contextmanager
def local_view(location: str | Path):
    """A folder to run the local checks on: ``location`` itself, or the skeleton of an
    s3:// repository (removed afterwards)."""
    if not is_s3(location):
        yield Path(location)
        return
    root = skeleton(str(location))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
