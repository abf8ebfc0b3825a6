"""The archive on its filesystem: one Parquet file and one manifest per organisation and month.

    <root>/<org_id>/<YYYY-MM>/manifest.json          the commit point
    <root>/<org_id>/<YYYY-MM>/logs-<stamp>-<n>.parquet  the file the manifest names

A data file is written under a fresh name, read back and checked, and only then does a
manifest naming it replace the previous one (written to a temporary name and moved, a single
PUT on object stores). A crash at any point leaves either the previous manifest with its
file, or the new one with its file, plus at most an unreferenced data file that the next
writer of that month removes. The root is any fsspec URL; a plain path is a local directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec  # type: ignore[import-untyped]
import fsspec.implementations.local  # type: ignore[import-untyped]
import msgspec
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_READ_CHUNK = 1 << 20

# Schema version 1: agent_logs' columns; ids as their text form (which sorts like the uuid),
# `data` as the JSON text of the log's fields.
SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("org_id", pa.string(), nullable=False),
        pa.field("gateway_id", pa.string(), nullable=False),
        pa.field("agent_id", pa.string()),
        pa.field("agent_uid", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("data", pa.string(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


class ArchiveError(Exception):
    """An archive file does not match its manifest, or a manifest cannot be read."""


class Manifest(msgspec.Struct, kw_only=True):
    schema_version: int
    org_id: str
    month: str
    file: str
    rows: int
    bytes: int
    sha256: str
    written_at: dt.datetime
    kinds: dict[str, int] = {}
    min_ts: dt.datetime | None = None
    max_ts: dt.datetime | None = None


_manifest_json = msgspec.json.Decoder(Manifest)


def month_key(month: dt.date) -> str:
    return f"{month.year:04d}-{month.month:02d}"


def parse_month(text: str) -> dt.date:
    """`YYYY-MM` to the month's first day; ValueError naming the expected form."""
    try:
        parsed = dt.datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise ValueError(f"{text!r} is not a month written YYYY-MM") from None
    return parsed.date()


class _HashingSink:
    """The writable end of a data file, hashing and counting what passes through."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self._raw.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)


def _sync(raw: Any) -> None:
    """fsync a local file before it is named by a manifest (power loss, not only a crash)."""
    try:
        raw.flush()
        os.fsync(raw.fileno())
    except (AttributeError, OSError, ValueError):
        # Object stores have no fsync: an object exists once its upload completed.
        pass


@dataclass
class WrittenFile:
    name: str
    rows: int
    bytes: int
    sha256: str
    kinds: dict[str, int]
    min_ts: dt.datetime | None
    max_ts: dt.datetime | None


class DataFileWriter:
    """Streams record batches into a new, not yet referenced data file of one month."""

    def __init__(self, store: ArchiveStore, org_id: uuid.UUID, month: dt.date) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self.name = f"logs-{stamp}-{secrets.token_hex(4)}.parquet"
        self._store = store
        self._path = store.month_dir(org_id, month) + "/" + self.name
        store.fs.makedirs(store.month_dir(org_id, month), exist_ok=True)
        self._raw = store.fs.open(self._path, "wb")
        self._sink = _HashingSink(self._raw)
        self._writer = pq.ParquetWriter(
            pa.PythonFile(self._sink, mode="w"), SCHEMA, compression="zstd"
        )
        self.rows = 0
        self.kinds: dict[str, int] = {}
        self.min_ts: dt.datetime | None = None
        self.max_ts: dt.datetime | None = None

    def write_rows(self, columns: dict[str, list[Any]]) -> None:
        batch = pa.RecordBatch.from_pydict(columns, schema=SCHEMA)
        if batch.num_rows == 0:
            return
        self._writer.write_batch(batch)
        self.rows += batch.num_rows
        kinds = batch.column("kind").value_counts()
        for entry in kinds.to_pylist():
            self.kinds[entry["values"]] = self.kinds.get(entry["values"], 0) + entry["counts"]
        # Batches arrive in (ts, id) order; `ts` may be given as microseconds since 1970.
        ts = batch.column("ts")
        first, last = ts[0].as_py(), ts[batch.num_rows - 1].as_py()
        self.min_ts = first if self.min_ts is None else min(self.min_ts, first)
        self.max_ts = last if self.max_ts is None else max(self.max_ts, last)

    def finish(self) -> WrittenFile:
        self._writer.close()
        _sync(self._raw)
        self._raw.close()
        return WrittenFile(
            name=self.name,
            rows=self.rows,
            bytes=self._sink.size,
            sha256=self._sink.sha256.hexdigest(),
            kinds=self.kinds,
            min_ts=self.min_ts,
            max_ts=self.max_ts,
        )

    def abandon(self) -> None:
        try:
            self._writer.close()
            self._raw.close()
        finally:
            self._store.remove_quietly(self._path)


class ArchiveStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        if isinstance(self.fs, fsspec.implementations.local.LocalFileSystem):
            # People's activity: readable by the backend's user only.
            os.makedirs(self.root, mode=0o700, exist_ok=True)

    def org_dir(self, org_id: uuid.UUID | str) -> str:
        return f"{self.root}/{org_id}"

    def month_dir(self, org_id: uuid.UUID | str, month: dt.date) -> str:
        return f"{self.org_dir(org_id)}/{month_key(month)}"

    def data_path(self, manifest: Manifest) -> str:
        return f"{self.org_dir(manifest.org_id)}/{manifest.month}/{manifest.file}"

    def manifest(self, org_id: uuid.UUID | str, month: dt.date) -> Manifest | None:
        path = f"{self.month_dir(org_id, month)}/{MANIFEST}"
        try:
            with self.fs.open(path, "rb") as file:
                raw = file.read()
        except FileNotFoundError:
            return None
        try:
            return _manifest_json.decode(raw)
        except msgspec.DecodeError as exc:
            raise ArchiveError(f"{path}: not a readable manifest ({exc})") from None

    def manifests(self, org_id: uuid.UUID | str | None = None) -> list[Manifest]:
        """Every committed month, by organisation and month."""
        base = self.org_dir(org_id) if org_id is not None else f"{self.root}/*"
        found = []
        for path in sorted(self.fs.glob(f"{base}/*/{MANIFEST}")):
            with self.fs.open(path, "rb") as file:
                found.append(_manifest_json.decode(file.read()))
        return sorted(found, key=lambda m: (m.org_id, m.month))

    def verify(self, org_id: uuid.UUID, month: dt.date, written: WrittenFile) -> None:
        """Read the file back: its bytes must hash as written, its rows count as written."""
        path = f"{self.month_dir(org_id, month)}/{written.name}"
        digest = hashlib.sha256()
        size = 0
        with self.fs.open(path, "rb") as file:
            while chunk := file.read(_READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        if size != written.bytes or digest.hexdigest() != written.sha256:
            raise ArchiveError(f"{path}: read back {size} bytes that differ from those written")
        rows = sum(batch.num_rows for batch in self.batches_at(path))
        if rows != written.rows:
            raise ArchiveError(f"{path}: holds {rows} rows, {written.rows} were written")

    def check(self, manifest: Manifest) -> None:
        """The file a manifest names still hashes to the manifest's checksum."""
        path = self.data_path(manifest)
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as file:
            while chunk := file.read(_READ_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != manifest.sha256:
            raise ArchiveError(f"{path}: checksum differs from its manifest's")

    def batches_at(self, path: str, batch_size: int = 10_000) -> Iterator[Any]:
        with self.fs.open(path, "rb") as file:
            yield from pq.ParquetFile(file).iter_batches(batch_size=batch_size)

    def batches(self, manifest: Manifest, batch_size: int = 10_000) -> Iterator[Any]:
        return self.batches_at(self.data_path(manifest), batch_size)

    def commit(
        self, org_id: uuid.UUID, month: dt.date, written: WrittenFile, previous: Manifest | None
    ) -> Manifest:
        """Make `written` the month's archive: the manifest is replaced last, in one move."""
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            org_id=str(org_id),
            month=month_key(month),
            file=written.name,
            rows=written.rows,
            bytes=written.bytes,
            sha256=written.sha256,
            written_at=dt.datetime.now(dt.UTC),
            kinds=written.kinds,
            min_ts=written.min_ts,
            max_ts=written.max_ts,
        )
        directory = self.month_dir(org_id, month)
        temporary = f"{directory}/.{MANIFEST}.{secrets.token_hex(4)}"
        with self.fs.open(temporary, "wb") as file:
            file.write(msgspec.json.encode(manifest))
            _sync(file)
        self.fs.mv(temporary, f"{directory}/{MANIFEST}")
        if previous is not None and previous.file != manifest.file:
            self.remove_quietly(self.data_path(previous))
        return manifest

    def remove_month(self, org_id: uuid.UUID, month: dt.date, previous: Manifest) -> None:
        """Forget a month whose every row was erased: manifest first, then its file."""
        self.remove_quietly(f"{self.month_dir(org_id, month)}/{MANIFEST}")
        self.remove_quietly(self.data_path(previous))

    def sweep(self, org_id: uuid.UUID, month: dt.date) -> int:
        """Remove what a crashed writer left in a month: files no manifest names."""
        directory = self.month_dir(org_id, month)
        current = self.manifest(org_id, month)
        keep = {MANIFEST} | ({current.file} if current is not None else set())
        try:
            entries = self.fs.ls(directory, detail=False)
        except FileNotFoundError:
            return 0
        removed = 0
        for entry in entries:
            if entry.rstrip("/").rsplit("/", 1)[-1] not in keep:
                self.remove_quietly(entry)
                removed += 1
        return removed

    def remove_quietly(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)
