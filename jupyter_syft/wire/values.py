"""Conversions between user data and Arrow.

Data crosses process and network boundaries only as Arrow (bulk values) or as a small msgspec tree
(the result manifest), never as pickle: a peer's bytes must not be able to run code here.

Tabular data (pandas, pyarrow) becomes an ordinary Arrow table. Arrays and tensors become a
"tensor" table: one column "values" with the flattened data in C order, cut into record batches of
about 4 MiB (a good size for streaming), plus schema metadata giving kind, shape, dtype and library.
torch is imported only when a tensor has to be rebuilt, so importing this module stays cheap.
A matplotlib figure (or Axes) becomes PNG bytes in the job, checked again where it arrives
(`PNGImage`): a figure's objects never travel.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import sys
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa

KIND_KEY = b"jupyter_syft.kind"
SHAPE_KEY = b"jupyter_syft.shape"
DTYPE_KEY = b"jupyter_syft.dtype"
LIBRARY_KEY = b"jupyter_syft.library"
VALUES_COLUMN = "values"
BATCH_BYTES = 4 * 2**20
MAX_DEPTH = 100
MANIFEST_VERSION = 1
MAX_PNG_BYTES = 2 * 2**20  # a figure's PNG (it rides in the manifest)
MAX_PNG_SIDE = 10_000  # pixels
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_DPI = 100

# dtype name -> numpy dtype of the stored values. Arrow's bool is bit-packed and Arrow has no
# bfloat16, so those keep their raw bytes (uint8, uint16): every dtype then converts without a copy.
_STORAGE: dict[str, np.dtype] = {
    "bool": np.dtype(np.uint8),
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "bfloat16": np.dtype(np.uint16),
}
_NUMPY_DTYPES = sorted(set(_STORAGE) - {"bfloat16"})
_TORCH_DTYPES = sorted(_STORAGE)
_SCALAR_KINDS = "biufcmMSU"  # numpy scalar kinds shipped as raw bytes (no object or void)
_SUPPORTED = (
    "None, bool, int, float, str, numpy scalars, numpy arrays, torch tensors, pandas DataFrame "
    "and Series, pyarrow Table, matplotlib Figure or Axes (as a PNG image), and dict (str "
    "keys), list and tuple of these"
)


class SchemaMismatchError(ValueError):
    """The mock's schema differs from the private data's: code tried on the mock could fail."""


class UnsupportedValueError(TypeError):
    """A value of a type that cannot be converted to Arrow or the result manifest."""


def _torch() -> Any:
    """torch if the process already imported it: otherwise no value can be a tensor."""
    return sys.modules.get("torch")


def _is_tensor(value: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(value, torch.Tensor)


# ---------------------------------------------------------------------------------------------
# data <-> table


def data_to_table(data: Any) -> pa.Table:
    """Convert a DataFrame, Arrow table, numpy array or torch tensor to an Arrow table.

    Arrays and tensors share memory with `data` when they are already contiguous on the CPU.
    """
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pd.DataFrame):
        try:
            # preserve_index=None stores a RangeIndex as metadata only, other indexes as columns.
            return pa.Table.from_pandas(data, preserve_index=None)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise UnsupportedValueError(f"cannot convert this DataFrame to Arrow: {e}") from e
    if isinstance(data, np.ma.MaskedArray):
        raise UnsupportedValueError("numpy masked arrays are not supported: fill them first")
    if isinstance(data, np.ndarray):
        return _numpy_table(data)
    if _is_tensor(data):
        return _torch_table(data)
    raise UnsupportedValueError(
        f"cannot convert {_type_name(data)} to an Arrow table; supported: pandas DataFrame, "
        "pyarrow Table, numpy ndarray, torch Tensor"
    )


def _numpy_table(array: np.ndarray) -> pa.Table:
    name = array.dtype.name
    if name not in _NUMPY_DTYPES:
        raise UnsupportedValueError(
            f"numpy arrays of dtype {array.dtype} are not supported; supported dtypes: "
            + ", ".join(_NUMPY_DTYPES)
        )
    flat = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")).reshape(-1)
    return _tensor_table(flat.view(_STORAGE[name]), array.shape, name, "numpy")


def _torch_table(tensor: Any) -> pa.Table:
    torch = _torch()
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPES or tensor.layout != torch.strided:
        raise UnsupportedValueError(
            f"torch tensors of dtype {tensor.dtype} and layout {tensor.layout} are not supported; "
            "supported: strided tensors of dtype " + ", ".join(_TORCH_DTYPES)
        )
    tensor = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
    if name == "bfloat16":
        tensor = tensor.view(torch.int16)  # numpy has no bfloat16
    flat = tensor.numpy().reshape(-1)
    return _tensor_table(flat.view(_STORAGE[name]), tuple(tensor.shape), name, "torch")


def _tensor_table(flat: np.ndarray, shape: tuple[int, ...], dtype: str, library: str) -> pa.Table:
    """One "values" column over `flat` without copying, cut into ~4 MiB record batches."""
    values = pa.Array.from_buffers(
        pa.from_numpy_dtype(flat.dtype), len(flat), [None, pa.py_buffer(flat)]
    )
    schema = pa.schema(
        [(VALUES_COLUMN, values.type)],
        metadata={
            KIND_KEY: b"tensor",
            SHAPE_KEY: json.dumps(list(shape)).encode(),
            DTYPE_KEY: dtype.encode(),
            LIBRARY_KEY: library.encode(),
        },
    )
    rows = max(1, BATCH_BYTES // flat.itemsize)
    batches = [
        pa.record_batch([values.slice(start, rows)], schema=schema)
        for start in range(0, len(flat), rows)
    ]
    return pa.Table.from_batches(batches, schema)


def table_kind(schema: pa.Schema) -> str:
    """Whether a table holds an array or tensor ("tensor") or tabular data ("table")."""
    metadata = schema.metadata or {}
    return "tensor" if metadata.get(KIND_KEY) == b"tensor" else "table"


def tensor_meta(schema: pa.Schema) -> dict[str, Any]:
    """A tensor table's "shape" (list), "dtype" and "library", checked: the schema may come
    from a peer. ValueError if it is not a well-formed tensor table."""
    metadata = schema.metadata or {}
    try:
        shape = json.loads(metadata[SHAPE_KEY])
        dtype = metadata[DTYPE_KEY].decode()
        library = metadata[LIBRARY_KEY].decode()
    except (KeyError, ValueError) as e:
        raise ValueError(f"malformed tensor table metadata: {e!r}") from e
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"malformed tensor table: shape {shape!r} is not a list of sizes")
    supported = {"numpy": _NUMPY_DTYPES, "torch": _TORCH_DTYPES}.get(library)
    if supported is None or dtype not in supported:
        raise ValueError(f"malformed tensor table: unknown {library} dtype {dtype!r}")
    storage = pa.from_numpy_dtype(_STORAGE[dtype])
    if schema.names != [VALUES_COLUMN] or schema.field(0).type != storage:
        raise ValueError(
            f"malformed tensor table: expected one column {VALUES_COLUMN!r} of type {storage}, "
            f"got {schema}"
        )
    return {"shape": shape, "dtype": dtype, "library": library}


def table_to_data(table: pa.Table, device: str | None = None) -> Any:
    """Rebuild what data_to_table converted: a DataFrame, numpy array or torch tensor.

    Arrays share the table's memory when its column is one chunk; otherwise the chunks are
    copied once into a new buffer. numpy arrays are read-only, as Arrow data is immutable (and
    whether memory is shared or not, so code behaves alike on mock and private data). torch has
    no read-only tensors: a shared tensor writes into the table's memory, which is safe for
    tables from read_ipc_file (a private copy-on-write mapping) or built in memory. DataFrames
    need no care: pandas copies on write. A torch tensor is moved to `device` when given.
    """
    if table_kind(table.schema) == "table":
        try:
            # One block per column: numeric columns without nulls then share the table's memory.
            return table.to_pandas(split_blocks=True)
        except (pa.ArrowException, KeyError, TypeError, ValueError) as e:  # e.g. bad metadata
            raise ValueError(f"cannot convert this table to pandas: {e}") from e
    meta = tensor_meta(table.schema)
    shape, dtype = meta["shape"], meta["dtype"]
    column = table.column(VALUES_COLUMN)
    count = math.prod(shape)
    if len(column) != count or column.null_count:
        raise ValueError(
            f"malformed tensor table: {len(column)} values ({column.null_count} null) "
            f"for shape {shape}"
        )
    if meta["library"] == "numpy":
        array = _flat_numpy(column, _STORAGE[dtype])
        array.flags.writeable = False
        return array.view(dtype).reshape(shape)
    import torch  # only here: importing torch costs ~0.8 s

    chunks = [chunk for chunk in column.chunks if len(chunk)]
    if len(chunks) == 1:
        flat = torch.from_dlpack(chunks[0])  # zero copy and writable (see docstring)
    else:
        flat = torch.from_numpy(_flat_numpy(column, _STORAGE[dtype]))
    tensor = flat.view(getattr(torch, dtype)).reshape(shape)
    return tensor if device is None else tensor.to(device)


def _flat_numpy(column: pa.ChunkedArray, storage: np.dtype) -> np.ndarray:
    """The column's values as one array: a view of a single chunk, else one filled buffer."""
    views = [
        np.frombuffer(
            chunk.buffers()[1], storage, count=len(chunk), offset=chunk.offset * storage.itemsize
        )
        for chunk in column.chunks
        if len(chunk)
    ]
    if len(views) == 1:
        return views[0]
    flat = np.empty(len(column), storage)
    start = 0
    for view in views:
        flat[start : start + len(view)] = view
        start += len(view)
    return flat


# ---------------------------------------------------------------------------------------------
# mock schema check


def check_mock_schema(private: pa.Schema, mock: pa.Schema) -> None:
    """Raise SchemaMismatchError when code written against the mock may not fit the private data.

    Tables must agree on column names, order and types; tensors on library, dtype and shape
    except the first dimension (the number of rows may differ).
    """
    kinds = table_kind(private), table_kind(mock)
    if kinds[0] != kinds[1]:
        raise SchemaMismatchError(f"private data is a {kinds[0]} but the mock is a {kinds[1]}")
    if kinds[0] == "tensor":
        _check_mock_tensor(private, mock)
    else:
        _check_mock_table(private, mock)


def _check_mock_tensor(private: pa.Schema, mock: pa.Schema) -> None:
    try:
        p, m = tensor_meta(private), tensor_meta(mock)
    except ValueError as e:
        raise SchemaMismatchError(str(e)) from e
    problems = [
        f"{key} {p[key]} (private) vs {m[key]} (mock)"
        for key in ("library", "dtype")
        if p[key] != m[key]
    ]
    if len(p["shape"]) != len(m["shape"]) or p["shape"][1:] != m["shape"][1:]:
        problems.append(
            f"shape {tuple(p['shape'])} (private) vs {tuple(m['shape'])} (mock): only the first "
            "dimension may differ"
        )
    if problems:
        raise SchemaMismatchError(
            "mock tensor differs from the private one: " + "; ".join(problems)
        )


def _check_mock_table(private: pa.Schema, mock: pa.Schema) -> None:
    p_types = dict(zip(private.names, private.types, strict=True))
    m_types = dict(zip(mock.names, mock.types, strict=True))
    problems = []
    if missing := [name for name in private.names if name not in m_types]:
        problems.append(f"mock lacks columns {missing}")
    if extra := [name for name in mock.names if name not in p_types]:
        problems.append(f"mock has extra columns {extra}")
    problems += [
        f"column {name!r} is {p_types[name]} (private) vs {m_types[name]} (mock)"
        for name in private.names
        if name in m_types and p_types[name] != m_types[name]
    ]
    if not problems and private.names != mock.names:
        problems.append(f"column order {private.names} (private) vs {mock.names} (mock)")
    if problems:
        raise SchemaMismatchError("mock table differs from the private one: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Arrow IPC files


def write_ipc_file(path: str | os.PathLike[str], table: pa.Table) -> int:
    """Write `table` as an uncompressed Arrow IPC file and return its size.

    The file is written next to its destination, flushed to disk and renamed into place, so a
    reader never sees a partial file, even after a crash.
    """
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with pa.OSFile(tmp, "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            size = sink.tell()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return size


def read_ipc_file(path: str | os.PathLike[str]) -> pa.Table:
    """Read an Arrow IPC file without copying it, through a private copy-on-write mapping.

    Copy-on-write (not Arrow's read-only mapping) so that writing into a tensor rebuilt from the
    table changes only this process's pages instead of crashing it or changing the file.
    """
    with open(path, "rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    return pa.ipc.open_file(pa.py_buffer(mapping)).read_all()


# ---------------------------------------------------------------------------------------------
# figures


class PNGImage:
    """A figure that came back from a request: PNG bytes, checked (signature, size, image
    dimensions) before anything shows them; a notebook displays it inline (`_repr_png_`)."""

    def __init__(self, data: bytes) -> None:
        self.width, self.height = check_png(data)
        self.data = bytes(data)

    def _repr_png_(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        return f"<PNG image {self.width}x{self.height}, {len(self.data)} bytes>"


def check_png(data: bytes) -> tuple[int, int]:
    """The (width, height) of a PNG image; ValueError if `data` is not one or is too big."""
    if len(data) > MAX_PNG_BYTES:
        raise ValueError(f"malformed result: a PNG image of {len(data)} bytes, over the cap")
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        raise ValueError("malformed result: an image that is not a PNG")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not (0 < width <= MAX_PNG_SIDE and 0 < height <= MAX_PNG_SIDE):
        raise ValueError(f"malformed result: a PNG image of {width}x{height} pixels")
    return width, height


def figure_of(value: Any) -> Any:
    """The matplotlib Figure that `value` is or draws on (an Axes, or pandas' array of Axes),
    else None. matplotlib is looked for only if the process imported it already."""
    figure_module, axes_module = (
        sys.modules.get("matplotlib.figure"),
        sys.modules.get("matplotlib.axes"),
    )
    if figure_module is None or axes_module is None:
        return None
    if isinstance(value, np.ndarray) and value.dtype == object and value.size:
        value = value.flat[0]
    if isinstance(value, figure_module.Figure):
        return value
    if isinstance(value, axes_module.Axes):
        return value.get_figure(root=True)
    return None


def figure_png(figure: Any) -> bytes:
    """A Figure as PNG bytes (rendered by Agg, whatever the backend); too big a figure is an
    UnsupportedValueError that says how to shrink it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    data = buffer.getvalue()
    try:
        check_png(data)
    except ValueError:
        raise UnsupportedValueError(
            f"the figure is a {len(data) / 2**20:.3g} MiB PNG, over the "
            f"{MAX_PNG_BYTES // 2**20} MiB cap: make it smaller (figsize)"
        ) from None
    return data


# ---------------------------------------------------------------------------------------------
# results: a manifest tree (msgspec) plus Arrow tables for the bulk leaves


class _None(msgspec.Struct, tag="none"):
    pass


class _Bool(msgspec.Struct, tag="bool"):
    value: bool


class _Int(msgspec.Struct, tag="int"):
    value: int


class _BigInt(msgspec.Struct, tag="bigint"):
    """An int outside msgpack's 64-bit range, as decimal digits."""

    digits: str


class _Float(msgspec.Struct, tag="float"):
    value: float


class _Str(msgspec.Struct, tag="str"):
    value: str


class _NumpyScalar(msgspec.Struct, tag="npscalar"):
    dtype: str  # numpy dtype string with byte order, e.g. "<f4"
    raw: bytes


class _List(msgspec.Struct, tag="list"):
    items: list[_Node]


class _Tuple(msgspec.Struct, tag="tuple"):
    items: list[_Node]


class _Dict(msgspec.Struct, tag="dict"):
    items: dict[str, _Node]


class _Table(msgspec.Struct, tag="table"):
    """A pyarrow Table, shipped as is."""

    part: int


class _Frame(msgspec.Struct, tag="dataframe"):
    part: int


class _Series(msgspec.Struct, tag="series"):
    """A Series, shipped as a one-column table; its name lives here."""

    part: int
    name: str | int | float | bool | None


class _Tensor(msgspec.Struct, tag="tensor"):
    """A numpy array or torch tensor (the table's metadata says which)."""

    part: int


class _Png(msgspec.Struct, tag="png"):
    """A figure, rendered to PNG in the job (PNGImage on arrival)."""

    data: bytes


_Node = (
    _None
    | _Bool
    | _Int
    | _BigInt
    | _Float
    | _Str
    | _NumpyScalar
    | _List
    | _Tuple
    | _Dict
    | _Table
    | _Frame
    | _Series
    | _Tensor
    | _Png
)


class _Manifest(msgspec.Struct):
    root: _Node
    version: int = MANIFEST_VERSION


_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def encode_result(value: Any) -> tuple[bytes, list[pa.Table]]:
    """Split a result into a manifest (msgspec msgpack) and Arrow tables for its bulk leaves.

    Subclasses of the supported types (e.g. an IntEnum, a namedtuple) come back as their base type.
    """
    tables: list[pa.Table] = []
    root = _encode(value, tables, "result", 0)
    return msgspec.msgpack.encode(_Manifest(root)), tables


def _encode(value: Any, tables: list[pa.Table], where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"{where} is nested more than {MAX_DEPTH} levels deep (a cycle?)")
    if value is None:
        return _None()
    figure = figure_of(value)
    if figure is not None:
        return _Png(figure_png(figure))
    if isinstance(value, np.generic):
        array = np.asarray(value)  # as an array, np.str_("") has a dtype that fits its bytes
        if array.dtype.kind not in _SCALAR_KINDS:
            raise UnsupportedValueError(
                f"{where}: numpy scalars of dtype {array.dtype} are not supported"
            )
        return _NumpyScalar(array.dtype.str, array.tobytes())
    if isinstance(value, bool):
        return _Bool(value)
    if isinstance(value, int):
        if _INT64_MIN <= value <= _UINT64_MAX:
            return _Int(int(value))
        return _BigInt(str(value))
    if isinstance(value, float):
        return _Float(float(value))
    if isinstance(value, str):
        return _Str(str(value))
    if isinstance(value, dict):
        fields: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnsupportedValueError(
                    f"{where}: dict keys must be str, got {_type_name(key)} {key!r}"
                )
            fields[str(key)] = _encode(item, tables, f"{where}[{key!r}]", depth + 1)
        return _Dict(fields)
    if isinstance(value, list | tuple):
        items = [_encode(item, tables, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
        return _Tuple(items) if isinstance(value, tuple) else _List(items)
    if isinstance(value, pd.Series):
        if not isinstance(value.name, str | int | float | bool | None):
            raise UnsupportedValueError(
                f"{where}: a Series name must be str, int, float, bool or None, "
                f"got {_type_name(value.name)}"
            )
        frame = value.to_frame(name=VALUES_COLUMN)
        return _Series(_add_part(tables, frame, where), value.name)
    if isinstance(value, pd.DataFrame):
        return _Frame(_add_part(tables, value, where))
    if isinstance(value, pa.Table):
        return _Table(_add_part(tables, value, where))
    if isinstance(value, np.ndarray) or _is_tensor(value):
        return _Tensor(_add_part(tables, value, where))
    raise UnsupportedValueError(
        f"{where}: cannot ship a value of type {_type_name(value)}; supported: {_SUPPORTED}"
    )


def _add_part(tables: list[pa.Table], data: Any, where: str) -> int:
    try:
        tables.append(data_to_table(data))
    except UnsupportedValueError as e:
        raise UnsupportedValueError(f"{where}: {e}") from e
    return len(tables) - 1


def decode_result(manifest: bytes, tables: list[pa.Table]) -> Any:
    """Rebuild a result from encode_result's output; ValueError if it is malformed."""
    try:
        decoded = msgspec.msgpack.decode(manifest, type=_Manifest)
    except (msgspec.DecodeError, RecursionError) as e:
        raise ValueError(f"malformed result manifest: {e}") from e
    if decoded.version != MANIFEST_VERSION:
        raise ValueError(f"result manifest version {decoded.version} is not supported")
    return _decode(decoded.root, tables, 0)


def _decode(node: Any, tables: list[pa.Table], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"malformed result manifest: nested more than {MAX_DEPTH} levels deep")
    match node:
        case _None():
            return None
        case _Bool() | _Int() | _Float() | _Str():
            return node.value
        case _BigInt():
            try:
                return int(node.digits)
            except ValueError as e:
                raise ValueError(f"malformed result manifest: bad integer {node.digits!r}") from e
        case _NumpyScalar():
            return _decode_scalar(node)
        case _List():
            return [_decode(item, tables, depth + 1) for item in node.items]
        case _Tuple():
            return tuple(_decode(item, tables, depth + 1) for item in node.items)
        case _Dict():
            return {key: _decode(item, tables, depth + 1) for key, item in node.items.items()}
        case _Table():
            return _part(tables, node.part, None)
        case _Frame():
            return table_to_data(_part(tables, node.part, "table"))
        case _Series():
            frame = table_to_data(_part(tables, node.part, "table"))
            if list(frame.columns) != [VALUES_COLUMN]:
                raise ValueError(f"malformed result: series part {node.part} is not one column")
            series = frame[VALUES_COLUMN]
            series.name = node.name
            return series
        case _Tensor():
            return table_to_data(_part(tables, node.part, "tensor"))
        case _Png():
            return PNGImage(node.data)
    raise AssertionError(f"unhandled manifest node {node!r}")


def _decode_scalar(node: _NumpyScalar) -> np.generic:
    try:
        dtype = np.dtype(node.dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"malformed result manifest: bad numpy dtype {node.dtype!r}") from e
    if dtype.kind not in _SCALAR_KINDS or dtype.itemsize != len(node.raw):
        raise ValueError(
            f"malformed result manifest: {len(node.raw)} bytes for numpy dtype {node.dtype!r}"
        )
    return np.frombuffer(node.raw, dtype)[0]


def _part(tables: list[pa.Table], index: int, kind: str | None) -> pa.Table:
    """Part `index`, checked to be of `kind` (None: any table)."""
    if not 0 <= index < len(tables):
        raise ValueError(f"malformed result manifest: part {index} of {len(tables)} parts")
    table = tables[index]
    if kind is not None and table_kind(table.schema) != kind:
        raise ValueError(f"malformed result: part {index} should be a {kind}")
    return table


def result_nbytes(tables: list[pa.Table]) -> int:
    """Bytes of Arrow data in a result's parts (what max_result_bytes limits)."""
    return sum(table.nbytes for table in tables)


def _type_name(value: Any) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
