"""Datasets stored as partitioned Parquet where a cluster can read them.

A table dataset may live outside the node's data dir, at a location the cluster shares
(`create_dataset(..., location=URI)`, or `domain start --storage URI` for every new table):
a folder `LOCATION/NAME/` of `part-N.parquet` files, each of at most `partition_rows` rows
(by default sized to about PART_BYTES). Locations go through `pyarrow.fs`: a local or shared
path or a `file://` URI (tested), or an S3-compatible URI (`s3://bucket/prefix?endpoint_override=
...`), which takes the same code but is not tested here: there is no S3 server on these
machines, and a sandboxed job has no network to read one (its reads go through a local folder).
The mock stays in the node's data dir, as for any dataset.

Threat model: a job gets only the datasets its request names. The keeper hands a job a
partition folder as a descriptor of a detached, read-only clone of just that folder
(`open_tree(OPEN_TREE_CLONE)`), so `..` from it stays inside it: a sibling dataset at the same
location, the location itself and the node's file system are not reachable through it (the
job's Landlock rules allow only beneath it, and its mount namespace holds nothing else). The
partition files are written readable by others (the job's uid is its own): keep the location
folder itself closed (mode 0700), which a job's path never walks through.
"""

from __future__ import annotations

import ctypes
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from jupyter_syft.domain.sandbox import shown_folder
from jupyter_syft.wire.rpc import Refused

PART_BYTES = 64 * 2**20
PART_TEMPLATE = "part-{i}.parquet"
MAX_ROWS_PER_GROUP = 2**20

_OPEN_TREE = 428  # the same number on every architecture (new system calls, >= 424)
_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_READ_ONLY = 0x1 | 0x2 | 0x4 | 0x8  # RDONLY | NOSUID | NODEV | NOEXEC


@dataclass(frozen=True)
class Location:
    """Where partitioned datasets are written: the owner's URI, resolved by pyarrow.fs."""

    uri: str
    filesystem: pafs.FileSystem
    path: str  # the folder, in `filesystem`'s terms

    def folder(self, dataset: str) -> str:
        return f"{self.path.rstrip('/')}/{dataset}"

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)


def location(uri: str, data_dir: Path) -> Location:
    """The checked location `uri`; refuses (nothing created) a malformed URI, a folder that does
    not exist or cannot be written, and one inside the data dir or a folder jobs may read."""
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise Refused(
            "invalid", f"storage location {uri!r} is not an absolute path or a URI: {exc}"
        ) from None
    if not path.strip("/") and not isinstance(filesystem, pafs.LocalFileSystem):
        raise Refused("invalid", f"storage location {uri!r} names no bucket or folder")
    try:
        found = filesystem.get_file_info(path)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise Refused("invalid", f"storage location {uri!r} cannot be read: {exc}") from None
    if found.type == pafs.FileType.NotFound:
        raise Refused("invalid", f"storage location {uri!r} does not exist: create it first")
    if found.type != pafs.FileType.Directory:
        raise Refused("invalid", f"storage location {uri!r} is not a folder")
    if isinstance(filesystem, pafs.LocalFileSystem):
        path = os.path.realpath(path)
        data = os.path.realpath(data_dir)
        if os.path.commonpath([path, data]) in (path, data):  # one holds the other
            raise Refused(
                "invalid",
                f"storage location {uri!r} overlaps the node's data dir {data_dir}: use a "
                "folder of its own (no location keeps a dataset in the data dir)",
            )
        shown = shown_folder(path)
        if shown is not None:
            raise Refused(
                "invalid",
                f"storage location {uri!r} lies inside {shown}, which every job may read: "
                "put it elsewhere",
            )
        if not os.access(path, os.W_OK) or os.statvfs(path).f_flag & os.ST_RDONLY:
            raise Refused("invalid", f"storage location {uri!r} is not writable by the node")
    return Location(uri, filesystem, path)


def recorded_location(uri: str) -> Location:
    """A location checked when a dataset was written there, as the store recorded it."""
    filesystem, path = pafs.FileSystem.from_uri(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        path = os.path.realpath(path)
    return Location(uri, filesystem, path)


def write_partitions(table: pa.Table, where: Location, dataset: str, partition_rows: int) -> int:
    """Write `table` as `where/dataset/part-N.parquet` (a new folder, renamed into place when
    complete) and return the number of part files; refuses a folder that already exists."""
    import pyarrow.dataset as pads  # ~0.3 s: paid where partitions are written, not at each start

    final = where.folder(dataset)
    if where.filesystem.get_file_info(final).type != pafs.FileType.NotFound:
        raise Refused(
            "conflict", f"{final} already exists at storage location {where.uri!r}: nothing written"
        )
    if partition_rows <= 0:
        row_bytes = max(1, table.nbytes // max(1, table.num_rows))
        partition_rows = max(1, PART_BYTES // row_bytes)
    partial = f"{where.path.rstrip('/')}/.{dataset}.partial-{uuid.uuid4().hex}"
    try:
        pads.write_dataset(
            table,
            partial,
            filesystem=where.filesystem,
            format="parquet",
            basename_template=PART_TEMPLATE,
            max_rows_per_file=partition_rows,
            max_rows_per_group=min(partition_rows, MAX_ROWS_PER_GROUP),
            existing_data_behavior="error",
        )
        if table.num_rows == 0:  # write_dataset writes no file for no rows
            pads.write_dataset(
                table.schema.empty_table(), partial, filesystem=where.filesystem, format="parquet",
                basename_template=PART_TEMPLATE, existing_data_behavior="overwrite_or_ignore",
            )  # fmt: skip
        parts = len(part_files(where.filesystem, partial))
        if where.local:  # readable by the job's own uid, whatever the node's umask
            os.chmod(partial, 0o755)
            for name in os.listdir(partial):
                os.chmod(os.path.join(partial, name), 0o644)
        where.filesystem.move(partial, final)
    except BaseException:
        remove_folder(where, partial)
        raise
    return parts


def part_files(filesystem: pafs.FileSystem, folder: str) -> list[str]:
    selector = pafs.FileSelector(folder)
    found = [f.path for f in filesystem.get_file_info(selector) if f.path.endswith(".parquet")]
    return sorted(found)


def remove_folder(where: Location, folder: str) -> None:
    """Delete a folder this node wrote at `where` (a failed or undone dataset); no error if gone."""
    if where.filesystem.get_file_info(folder).type == pafs.FileType.Directory:
        where.filesystem.delete_dir(folder)


# ---- the keeper and the job ---------------------------------------------------------------


def open_input(path: str) -> int:
    """A job's input opened read-only by its keeper: an Arrow file's descriptor, or for a
    partition folder a descriptor of a detached read-only mount of just that folder (as root;
    a plain directory descriptor otherwise, as with --sandbox off)."""
    if not os.path.isdir(path):
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if os.geteuid() != 0:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    flags = _OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC
    fd = libc.syscall(_OPEN_TREE, -100, os.fsencode(path), ctypes.c_uint(flags))  # AT_FDCWD
    if fd < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"open_tree: {os.strerror(error)}", path)
    attr = (ctypes.c_uint64 * 4)(_MOUNT_ATTR_READ_ONLY, 0, 0, 0)  # set, clear, propagation, userns
    result = libc.syscall(
        _MOUNT_SETATTR, fd, b"", ctypes.c_uint(_AT_EMPTY_PATH | _AT_RECURSIVE), attr, 32
    )
    if result != 0:
        error = ctypes.get_errno()
        os.close(fd)
        raise OSError(error, f"mount_setattr: {os.strerror(error)}", path)
    return fd


def is_folder(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def folder_path(fd: int) -> str:
    """The path through which a job reads the partition folder it was handed."""
    return f"/proc/self/fd/{fd}"


def read_table(fd: int) -> pa.Table:
    """A partitioned dataset, whole, as one table (a table input, as from an Arrow file)."""
    import pyarrow.dataset as pads  # ~0.3 s: only a job with such an input pays it

    parts = pads.dataset(folder_path(fd), format="parquet")
    return parts.to_table()
