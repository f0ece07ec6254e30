"""Conversion of published data to Arrow, and splitting into BATCH frames."""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from bridge_frames import decode_frames

from casparian_flow import ResourceLimitError, SchemaError, TopicError
from casparian_flow._bridge import batch_frames
from casparian_flow._convert import is_publishable, to_arrow_table

needs_view_types = pytest.mark.skipif(
    not hasattr(pa, "list_view"), reason=f"pyarrow {pa.__version__} has no view types"
)

EXPECTED = [{"id": 1, "name": "a"}, {"id": 2, "name": None}, {"id": 3, "name": "c"}]


def test_pandas_without_index() -> None:
    df = pd.DataFrame({"id": [1, 2, 3], "name": ["a", None, "c"]}, index=[10, 20, 30])
    t = to_arrow_table(df)
    assert t.column_names == ["id", "name"]  # no __index_level_0__
    assert t.to_pylist() == EXPECTED


def test_polars() -> None:
    t = to_arrow_table(pl.DataFrame({"id": [1, 2, 3], "name": ["a", None, "c"]}))
    assert t.to_pylist() == EXPECTED
    assert t.schema.field("name").type in (pa.string(), pa.large_string())


def test_table_is_passed_through_unchanged() -> None:
    t = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"]})
    assert to_arrow_table(t) is t


def test_record_batch() -> None:
    b = pa.RecordBatch.from_pydict({"id": [1, 2, 3], "name": ["a", None, "c"]})
    t = to_arrow_table(b)
    assert isinstance(t, pa.Table) and t.to_pylist() == EXPECTED


@pytest.mark.parametrize("bad", ["text", b"bytes", 3, {"id": [1]}, [1, 2], pd.Series([1, 2])])
def test_unsupported_type_names_type_and_accepted_types(bad: Any) -> None:
    assert not is_publishable(bad)
    with pytest.raises(SchemaError) as info:
        to_arrow_table(bad)
    msg = str(info.value)
    assert type(bad).__qualname__ in msg
    assert "pandas.DataFrame" in msg and "pyarrow.Table" in msg and "polars.DataFrame" in msg


def test_pandas_mixed_object_column_is_schema_error() -> None:
    with pytest.raises(SchemaError, match="pandas.DataFrame"):
        to_arrow_table(pd.DataFrame({"x": [1, "a", 2.5, object()]}))


@needs_view_types
def test_view_types_become_large_types_at_any_depth() -> None:
    sv = pa.array(["a", None, "ccc"], pa.string_view())
    t = pa.table(
        {
            "s": sv,
            "b": pa.array([b"a", None, b"c"], pa.binary_view()),
            "l": pa.array([["x"], None, ["y", "z"]], pa.list_(pa.string_view())),
            "st": pa.array([{"a": "x"}, None, {"a": "z"}], pa.struct([("a", pa.string_view())])),
            "m": pa.array([[("k", "v")], None, []], pa.map_(pa.string(), pa.string_view())),
            "lv": pa.array([[1], None, [2, 3]], pa.list_view(pa.int64())),
            "d": sv.dictionary_encode(),
            "i": [1, 2, 3],
        }
    )
    out = to_arrow_table(t.slice(1))
    out.validate(full=True)
    types = {f.name: f.type for f in out.schema}
    assert types["s"] == pa.large_string()
    assert types["b"] == pa.large_binary()
    assert types["l"] == pa.list_(pa.large_string())
    assert types["st"] == pa.struct([("a", pa.large_string())])
    assert types["m"] == pa.map_(pa.string(), pa.large_string())
    assert types["lv"] == pa.large_list(pa.int64())
    assert types["d"] == pa.dictionary(pa.int32(), pa.large_string())
    assert types["i"] == pa.int64()
    assert out.to_pylist() == [
        {"s": None, "b": None, "l": None, "st": None, "m": None, "lv": None, "d": None, "i": 2},
        {"s": "ccc", "b": b"c", "l": ["y", "z"], "st": {"a": "z"}, "m": [], "lv": [2, 3], "d": "ccc", "i": 3},
    ]


@needs_view_types
def test_list_view_with_overlapping_views_and_nesting() -> None:
    # Views may share values out of order: [values 2..3], [values 0..1], [value 1]
    lv = pa.ListViewArray.from_arrays(offsets=[2, 0, 1], sizes=[2, 2, 1], values=pa.array([10, 11, 12, 13]))
    nested = pa.struct([("v", pa.list_view(pa.string_view()))])
    out = to_arrow_table(pa.table({"lv": lv}))
    assert out.column("lv").to_pylist() == [[12, 13], [10, 11], [11]]
    out2 = to_arrow_table(pa.table({"n": pa.array([{"v": ["a", "b"]}, {"v": None}], nested)}))
    assert out2.schema.field("n").type == pa.struct([("v", pa.large_list(pa.large_string()))])
    assert out2.to_pylist() == [{"n": {"v": ["a", "b"]}}, {"n": {"v": None}}]


# --- chunking -----------------------------------------------------------------


def _big_table(rows: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "x": pa.array([i * 0.5 for i in range(rows)], pa.float64()),
            "s": pa.array([f"row-{i:08d}" for i in range(rows)], pa.string()),
        }
    )


def test_large_table_is_split_under_max_batch_bytes() -> None:
    table = _big_table(200_000)  # about 6.2 MB
    limit = 1 << 20
    frames = list(batch_frames("big", table, max_batch_bytes=limit))
    assert len(frames) >= 6
    for f in frames:
        assert f.ipc.size <= limit * 1.05, f.ipc.size
    decoded = decode_frames(b"".join(f.to_bytes() for f in frames))
    assert [d.topic for d in decoded] == ["big"] * len(frames)
    assert sum(f.rows for f in frames) == 200_000
    assert pa.Table.from_batches([b for d in decoded for b in d.batches]).equals(table)


def test_small_batches_share_a_frame() -> None:
    table = pa.Table.from_batches(_big_table(1000).to_batches(max_chunksize=10))
    frames = list(batch_frames("t", table))
    assert len(frames) == 1
    assert frames[0].batches == 100 and frames[0].rows == 1000


def test_empty_table_sends_schema_only() -> None:
    table = pa.table({"a": pa.array([], pa.int32())})
    (frame,) = list(batch_frames("t", table))
    (decoded,) = decode_frames(frame.to_bytes())
    assert decoded.schema is not None and decoded.schema.equals(table.schema)
    assert decoded.batches == [] and frame.rows == 0


def test_frame_cap_splits_unevenly_sized_rows() -> None:
    # 1 huge row among small ones: the estimate is wrong, the hard cap still holds.
    values = ["x" * 1000] * 60 + ["y" * 50_000] + ["x" * 1000] * 39
    table = pa.table({"s": values})
    frames = list(batch_frames("t", table, max_batch_bytes=1 << 20, max_frame_bytes=60_000))
    assert all(2 + 1 + f.ipc.size <= 60_000 for f in frames)
    assert len(frames) >= 2
    decoded = decode_frames(b"".join(f.to_bytes() for f in frames))
    assert [v for d in decoded for b in d.batches for v in b.column(0).to_pylist()] == values


def test_single_row_over_frame_cap_is_resource_limit() -> None:
    table = pa.table({"s": ["z" * 100_000]})
    with pytest.raises(ResourceLimitError, match="frame limit of 50000 bytes"):
        list(batch_frames("t", table, max_frame_bytes=50_000))


def test_batch_frames_validates_topic() -> None:
    with pytest.raises(TopicError):
        list(batch_frames("bad/topic", pa.table({"a": [1]})))
