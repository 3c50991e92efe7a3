"""Shared output storage for API nodes and workers on different machines.

- A shared filesystem needs nothing new: `FileStorage` over a `--data-dir` every node mounts.
- `ObjectStorage` keeps inputs and outputs in S3-compatible object storage (AWS S3, MinIO,
  Ceph...) through boto3, with a local cache per node. The job store records the cache path
  (`<cache>/<inputs|outputs>/<name>`); the object key is `<prefix><inputs|outputs>/<name>`, so
  any node can find the object from the recorded path and fetch it into its own cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stepedit.distributed.config import DistributedSettings
from stepedit.jobs.storage import (
    MEDIA_TYPES,
    FileStorage,
    Storage,
    StoredFile,
    sniff_format,
    write_atomically,
)

logger = logging.getLogger(__name__)


class ObjectStorage:
    """`Storage` in a bucket, with this node's copies in a local cache (a `FileStorage`)."""

    def __init__(self, cache_dir: Path, bucket: str, prefix: str, client: Any) -> None:
        self.cache = FileStorage(cache_dir)
        self.cache_dir = cache_dir
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client

    @classmethod
    def from_settings(cls, settings: DistributedSettings) -> ObjectStorage:
        import boto3

        assert settings.storage_url is not None
        parts = urlsplit(settings.storage_url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(
                f"storage URL must look like s3://bucket/prefix: {settings.storage_url}"
            )
        client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region
        )
        return cls(settings.data_dir / "cache", parts.netloc, parts.path, client)

    def key_for(self, path: str | Path) -> str:
        local = Path(path)
        return f"{self.prefix}{local.parent.name}/{local.name}"

    def save_input(self, job_id: str, data: bytes) -> Path:
        path = self.cache.save_input(job_id, data)
        self._upload(path, data)
        return path

    def save_mask(self, job_id: str, data: bytes) -> Path:
        path = self.cache.save_mask(job_id, data)
        self._upload(path, data)
        return path

    def save_output(self, token: str, data: bytes, image_format: str) -> Path:
        path = self.cache.save_output(token, data, image_format)
        self._upload(path, data)
        return path

    def output_path(self, token: str, image_format: str) -> Path:
        return self.cache.output_path(token, image_format)

    def stored_files(self) -> Iterator[StoredFile]:
        """Every object under the prefix, as the cache path a job would record for it."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                kind, _, name = str(item["Key"])[len(self.prefix) :].partition("/")
                if kind in ("inputs", "outputs") and name and "/" not in name:
                    yield StoredFile(self.cache_dir / kind / name, kind, item["LastModified"])

    def delete(self, path: str | Path | None) -> None:
        if path is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key_for(path))
        except Exception:
            logger.warning("could not delete object %s", self.key_for(path), exc_info=True)
        self.cache.delete(self.localize_path(path))

    def localize_path(self, path: str | Path) -> Path:
        """Where `path` (recorded by any node) lives in this node's cache."""
        recorded = Path(path)
        return self.cache_dir / recorded.parent.name / recorded.name

    def local_path(self, path: str | Path) -> Path:
        return self.fetch(path)

    def fetch(self, path: str | Path) -> Path:
        """This node's copy of a stored file, downloaded on first use; FileNotFoundError if gone."""
        local = self.localize_path(path)
        if local.is_file():
            return local
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key_for(path))
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(self.key_for(path)) from exc
        write_atomically(local, answer["Body"].read())
        return local

    def _upload(self, path: Path, data: bytes) -> None:
        extension = path.suffix.lstrip(".") or sniff_format(data)
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key_for(path),
            Body=data,
            ContentType=MEDIA_TYPES.get(extension, "application/octet-stream"),
        )


def storage_from_settings(settings: DistributedSettings) -> Storage:
    if settings.storage_url:
        return ObjectStorage.from_settings(settings)
    return FileStorage(settings.data_dir)
