"""Conversions between user data and Arrow, and the result manifest."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jupyter_syft.wire.values import (
    BATCH_BYTES,
    SchemaMismatchError,
    UnsupportedValueError,
    check_mock_schema,
    data_to_table,
    decode_result,
    encode_result,
    read_ipc_file,
    result_nbytes,
    table_kind,
    table_to_data,
    tensor_meta,
    write_ipc_file,
)

pytestmark = pytest.mark.unit

NUMPY_DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
]  # fmt: skip


def assert_same(a: Any, b: Any) -> None:
    """Equal values of the same types, NaN equal to NaN."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
    elif isinstance(a, pa.Table):
        assert a.equals(b, check_metadata=True)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


# --- strategies ---------------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
numpy_arrays = st.sampled_from(NUMPY_DTYPES).flatmap(lambda dtype: hnp.arrays(dtype, shapes))
torch_tensors = st.one_of(
    numpy_arrays.map(lambda a: torch.from_numpy(a.copy())),
    hnp.arrays("float32", shapes).map(lambda a: torch.from_numpy(a).to(torch.bfloat16)),
)
numpy_scalars = st.sampled_from([*NUMPY_DTYPES, "complex128", "datetime64[s]", "U3"]).flatmap(
    lambda dtype: hnp.from_dtype(np.dtype(dtype)).map(np.dtype(dtype).type)
)


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    rows = draw(st.integers(0, 5))
    columns = {}
    for name in draw(st.lists(st.sampled_from("abcd"), unique=True, max_size=3)):
        elements = draw(
            st.sampled_from(
                [st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(), st.text(max_size=5)]
            )
        )
        columns[name] = draw(st.lists(elements, min_size=rows, max_size=rows))
    index = draw(st.none() | st.just([f"row{i}" for i in range(rows)]))
    return pd.DataFrame(columns, index=index)


series = st.builds(
    pd.Series,
    st.lists(st.floats(), max_size=5),
    name=st.none() | st.text(max_size=5) | st.integers(-3, 3),
    dtype=st.just("float64"),
)
arrow_tables = st.lists(st.integers(-5, 5), max_size=5).map(lambda xs: pa.table({"x": xs}))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    numpy_scalars,
    numpy_arrays,
    torch_tensors,
    frames(),
    series,
    arrow_tables,
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=5), children, max_size=3),
    ),
    max_leaves=8,
)


# --- result manifest ----------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(trees)
def test_decode_inverts_encode(value: Any) -> None:
    manifest, tables = encode_result(value)
    assert isinstance(manifest, bytes)
    assert all(isinstance(table, pa.Table) for table in tables)
    assert_same(decode_result(manifest, tables), value)


@settings(deadline=None)
@given(trees)
def test_decode_inverts_encode_through_ipc_files(tmp_path_factory, value: Any) -> None:
    folder = tmp_path_factory.mktemp("parts")
    manifest, tables = encode_result(value)
    for i, table in enumerate(tables):
        write_ipc_file(folder / f"part-{i}.arrow", table)
    read = [read_ipc_file(folder / f"part-{i}.arrow") for i in range(len(tables))]
    assert_same(decode_result(manifest, read), value)


def test_scalars_live_in_the_manifest_and_bulk_in_parts() -> None:
    value = {"n": 3, "x": np.float32(1.5), "big": 2**100, "arr": np.arange(4), "t": torch.ones(2)}
    manifest, tables = encode_result(value)
    assert len(tables) == 2
    assert_same(decode_result(manifest, tables), value)
    assert result_nbytes(tables) == 4 * 8 + 2 * 4


def test_subclasses_come_back_as_their_base_type() -> None:
    from collections import OrderedDict, namedtuple

    point = namedtuple("point", "x y")
    value = [point(1, 2), OrderedDict(a=1)]
    assert decode_result(*encode_result(value)) == [(1, 2), {"a": 1}]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (object(), "object"),
        ({1: "a"}, "dict keys must be str"),
        ({"a": [1, {2, 3}]}, "set"),
        (np.array([1 + 2j]), "complex128"),
        (np.array(["a"]), "<U1"),
        (np.array([None], dtype=object), "object"),
        (torch.ones(2, dtype=torch.complex64), "complex64"),
        (torch.ones(2).to_sparse(), "sparse"),
        (pd.Series([1], name=("a", "b")), "Series name"),
        (pd.DataFrame({"a": [1, "x"]}), "DataFrame"),
        (b"bytes", "bytes"),
        (np.ma.masked_array([1, 2], mask=[0, 1]), "masked"),
    ],
)
def test_unsupported_values_are_refused_by_name(value: Any, named: str) -> None:
    with pytest.raises(UnsupportedValueError) as info:
        encode_result({"key": value})
    assert named in str(info.value)
    assert "result['key']" in str(info.value)


def test_unsupported_message_lists_what_is_supported() -> None:
    with pytest.raises(UnsupportedValueError) as info:
        encode_result(object())
    for kind in ("numpy arrays", "torch tensors", "pandas DataFrame", "pyarrow Table", "tuple"):
        assert kind in str(info.value)


def test_cycles_are_refused() -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(ValueError, match="nested more than"):
        encode_result(value)


def _manifest(root: Any, version: int = 1) -> bytes:
    return msgspec.msgpack.encode({"root": root, "version": version})


def _tensor_part() -> pa.Table:
    return data_to_table(np.arange(3))


@pytest.mark.parametrize(
    ("manifest", "tables", "message"),
    [
        (b"", [], "malformed result manifest"),
        (b"\xff\x00garbage", [], "malformed result manifest"),
        (msgspec.msgpack.encode([1, 2]), [], "malformed result manifest"),
        (_manifest({"type": "nope"}), [], "malformed result manifest"),
        (_manifest({"type": "int", "value": "x"}), [], "malformed result manifest"),
        (_manifest({"type": "none"}, version=2), [], "version 2"),
        (_manifest({"type": "tensor", "part": 0}), [], "part 0 of 0 parts"),
        (_manifest({"type": "tensor", "part": -1}), [_tensor_part()], "part -1 of 1"),
        (_manifest({"type": "dataframe", "part": 0}), [_tensor_part()], "should be a table"),
        (_manifest({"type": "tensor", "part": 0}), [pa.table({"a": [1]})], "should be a tensor"),
        (_manifest({"type": "bigint", "digits": "12x"}), [], "bad integer"),
        (_manifest({"type": "npscalar", "dtype": "O", "raw": b"12345678"}), [], "numpy dtype"),
        (_manifest({"type": "npscalar", "dtype": "nonsense", "raw": b""}), [], "numpy dtype"),
        (_manifest({"type": "npscalar", "dtype": "<f8", "raw": b"123"}), [], "3 bytes"),
        (
            _manifest({"type": "series", "part": 0, "name": None}),
            [pa.table({"a": [1], "b": [2]})],
            "not one column",
        ),
    ],
)
def test_malformed_manifests_raise_value_error(
    manifest: bytes, tables: list[pa.Table], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decode_result(manifest, tables)


@pytest.mark.parametrize("depth", [150, 100_000])
def test_deeply_nested_manifest_raises_value_error(depth: int) -> None:
    # msgpack by hand: {"root": {"type": "list", "items": [...]} nested `depth` times}
    nested = b"\x82\xa4type\xa4list\xa5items\x91" * depth + b"\x81\xa4type\xa4none"
    with pytest.raises(ValueError, match="malformed result manifest"):
        decode_result(b"\x81\xa4root" + nested, [])


def test_malformed_table_metadata_raises_value_error() -> None:
    table = pa.table({"a": [1]}).replace_schema_metadata({b"pandas": b"{not json"})
    with pytest.raises(ValueError, match="cannot convert this table to pandas"):
        decode_result(_manifest({"type": "dataframe", "part": 0}), [table])


def test_malformed_tensor_part_raises_value_error() -> None:
    table = _tensor_part()
    bad_shape = table.replace_schema_metadata(
        {**table.schema.metadata, b"jupyter_syft.shape": b"[5]"}
    )
    with pytest.raises(ValueError, match="3 values"):
        decode_result(_manifest({"type": "tensor", "part": 0}), [bad_shape])


# --- data <-> table -----------------------------------------------------------------------


@settings(deadline=None)
@given(numpy_arrays)
def test_numpy_round_trip(array: np.ndarray) -> None:
    table = data_to_table(array)
    assert table_kind(table.schema) == "tensor"
    assert table.column_names == ["values"]
    assert_same(table_to_data(table), array)


@settings(deadline=None)
@given(torch_tensors)
def test_torch_round_trip(tensor: torch.Tensor) -> None:
    assert_same(table_to_data(data_to_table(tensor)), tensor)


@settings(deadline=None)
@given(frames())
def test_dataframe_round_trip(frame: pd.DataFrame) -> None:
    table = data_to_table(frame)
    assert table_kind(table.schema) == "table"
    assert_same(table_to_data(table), frame)


def test_tensor_table_layout() -> None:
    array = np.arange(2 * 3 * 2**18, dtype=np.float64).reshape(2, 3, 2**18)  # 12 MiB
    table = data_to_table(array)
    meta = table.schema.metadata
    assert meta[b"jupyter_syft.kind"] == b"tensor"
    assert json.loads(meta[b"jupyter_syft.shape"]) == [2, 3, 2**18]
    assert meta[b"jupyter_syft.dtype"] == b"float64"
    assert meta[b"jupyter_syft.library"] == b"numpy"
    assert tensor_meta(table.schema) == {
        "shape": [2, 3, 2**18],
        "dtype": "float64",
        "library": "numpy",
    }
    batches = table.to_batches()
    assert len(batches) == 3
    assert all(batch.nbytes <= BATCH_BYTES for batch in batches)
    assert np.array_equal(table.column("values").to_numpy(), array.reshape(-1))  # C order


def test_non_contiguous_and_big_endian_arrays() -> None:
    array = np.arange(24, dtype=">i4").reshape(4, 6)[:, ::2].T
    result = table_to_data(data_to_table(array))
    assert result.dtype == np.dtype("int32")
    assert np.array_equal(result, array)


def test_torch_special_tensors() -> None:
    base = torch.arange(6.0, requires_grad=True)
    tensor = (base * 2).reshape(2, 3).T  # needs grad, not contiguous
    assert_same(table_to_data(data_to_table(tensor)), tensor.detach().contiguous())
    conjugate = torch.arange(3.0).neg()
    assert_same(table_to_data(data_to_table(conjugate)), conjugate)


def test_one_chunk_is_zero_copy_and_numpy_is_read_only() -> None:
    array = np.arange(1000, dtype=np.float64)
    result = table_to_data(data_to_table(array))
    assert np.shares_memory(result, array)
    assert not result.flags.writeable
    tensor = torch.arange(1000)
    assert table_to_data(data_to_table(tensor)).data_ptr() == tensor.data_ptr()


def test_many_chunks_fill_one_buffer() -> None:
    array = np.random.default_rng(0).random(3 * 2**20)  # 24 MiB: 6 chunks
    table = data_to_table(array)
    assert table.column("values").num_chunks == 6
    result = table_to_data(table)
    assert np.array_equal(result, array) and not result.flags.writeable
    tensor = table_to_data(data_to_table(torch.from_numpy(array)))
    assert torch.equal(tensor, torch.from_numpy(array))


def test_tensor_moves_to_device() -> None:
    tensor = table_to_data(data_to_table(torch.ones(3)), device="cpu")
    assert tensor.device == torch.device("cpu")
    assert isinstance(table_to_data(data_to_table(np.ones(3)), device="cpu"), np.ndarray)


def test_dataframe_index_kept_only_when_not_default() -> None:
    plain = pd.DataFrame({"a": [1.0, 2.0]})
    assert data_to_table(plain).column_names == ["a"]
    indexed = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.Index(["x", "y"], name="key"))
    assert data_to_table(indexed).column_names == ["a", "key"]
    assert_same(table_to_data(data_to_table(indexed)), indexed)


def test_arrow_table_passes_through() -> None:
    table = pa.table({"a": [1, 2]})
    assert data_to_table(table) is table
    assert table_kind(table.schema) == "table"


def test_other_data_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot convert list to an Arrow table; supported"):
        data_to_table([1, 2])


# --- mock schema check --------------------------------------------------------------------


def schema_of(data: Any) -> pa.Schema:
    return data_to_table(data).schema


def test_matching_mocks_are_accepted() -> None:
    check_mock_schema(
        schema_of(pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]})),
        schema_of(pd.DataFrame({"a": [0.5], "b": ["w"]})),
    )
    check_mock_schema(schema_of(np.zeros((100, 3, 2))), schema_of(np.zeros((5, 3, 2))))
    check_mock_schema(schema_of(torch.zeros(7)), schema_of(torch.zeros(2)))
    check_mock_schema(schema_of(np.array(1.0)), schema_of(np.array(2.0)))


@pytest.mark.parametrize(
    ("private", "mock", "message"),
    [
        (pd.DataFrame({"a": [1], "b": [2]}), pd.DataFrame({"a": [1]}), "lacks columns ['b']"),
        (pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [1], "c": [2]}), "extra columns ['c']"),
        (pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [1.0]}), "'a' is int64 (private) vs double"),
        (
            pd.DataFrame({"a": [1], "b": [2]}),
            pd.DataFrame({"b": [2], "a": [1]}),
            "column order ['a', 'b'] (private) vs ['b', 'a']",
        ),
        (pd.DataFrame({"a": [1]}), np.zeros(1), "private data is a table but the mock is a tensor"),
        (np.zeros((4, 3)), np.zeros((2, 3), np.float32), "dtype float64 (private) vs float32"),
        (np.zeros((4, 3)), np.zeros((4, 2)), "shape (4, 3) (private) vs (4, 2) (mock)"),
        (np.zeros((4, 3)), np.zeros(4), "shape (4, 3) (private) vs (4,) (mock)"),
        (np.zeros(4, np.float32), torch.zeros(4), "library numpy (private) vs torch"),
    ],
)
def test_mismatched_mocks_are_refused(private: Any, mock: Any, message: str) -> None:
    with pytest.raises(SchemaMismatchError) as info:
        check_mock_schema(schema_of(private), schema_of(mock))
    assert message in str(info.value)


# --- IPC files ----------------------------------------------------------------------------


def test_ipc_file_round_trip_and_size(tmp_path) -> None:
    table = data_to_table(np.arange(2**20, dtype=np.float64))  # 8 MiB, 2 batches
    path = tmp_path / "a.arrow"
    size = write_ipc_file(path, table)
    assert size == os.path.getsize(path)
    assert os.listdir(tmp_path) == ["a.arrow"]
    with pa.memory_map(str(path)) as source:  # the IPC *file* format, uncompressed
        reader = pa.ipc.open_file(source)
        assert reader.num_record_batches == 2
        assert reader.read_all().equals(table)
    assert read_ipc_file(path).equals(table, check_metadata=True)


def test_read_is_memory_mapped_and_writes_stay_private(tmp_path) -> None:
    path = tmp_path / "t.arrow"
    write_ipc_file(path, data_to_table(torch.arange(2**20, dtype=torch.float64)))
    before = pa.total_allocated_bytes()
    table = read_ipc_file(path)
    assert pa.total_allocated_bytes() - before < 2**16  # the data was not copied
    tensor = table_to_data(table)
    tensor += 1  # a private copy-on-write page: the file is unchanged
    assert torch.equal(table_to_data(read_ipc_file(path)), torch.arange(2**20, dtype=torch.float64))


def test_one_chunk_tensor_from_file_is_writable(tmp_path) -> None:
    path = tmp_path / "small.arrow"
    write_ipc_file(path, data_to_table(torch.arange(10)))
    tensor = table_to_data(read_ipc_file(path))
    tensor.add_(1)
    assert tensor[0] == 1
    assert table_to_data(read_ipc_file(path))[0] == 0


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    path = tmp_path / "a.arrow"
    write_ipc_file(path, pa.table({"a": [1]}))
    with pytest.raises(AttributeError):
        write_ipc_file(path, "not a table")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == ["a.arrow"]
    assert read_ipc_file(path).equals(pa.table({"a": [1]}))
