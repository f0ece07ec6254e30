"""Conversion of what plugins publish into Arrow tables the host can write.

Accepted: pandas DataFrame, polars DataFrame, pyarrow Table, pyarrow
RecordBatch. Arrow "view" types (string_view, binary_view, list_view), which
the host's Arrow/Parquet stack does not write, are converted to their
large_* equivalents, at any nesting depth. pandas and polars are never
imported here: a DataFrame of theirs can only exist if they are loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from .errors import SchemaError

__all__ = ["ACCEPTED_TYPES", "is_publishable", "to_arrow_table", "normalize_type"]

ACCEPTED_TYPES = "pandas.DataFrame, polars.DataFrame, pyarrow.Table or pyarrow.RecordBatch"


def _type_name(obj: object) -> str:
    t = type(obj)
    module = t.__module__
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


def _pandas_frame_type() -> type | None:
    pd = sys.modules.get("pandas")
    frame = getattr(pd, "DataFrame", None)
    return frame if isinstance(frame, type) else None


def _polars_frame_type() -> type | None:
    pl = sys.modules.get("polars")
    frame = getattr(pl, "DataFrame", None)
    return frame if isinstance(frame, type) else None


def is_publishable(obj: object) -> bool:
    """True if ``obj`` is one of the accepted table types."""
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        return True
    pd_frame = _pandas_frame_type()
    if pd_frame is not None and isinstance(obj, pd_frame):
        return True
    pl_frame = _polars_frame_type()
    return pl_frame is not None and isinstance(obj, pl_frame)


def to_arrow_table(data: Any) -> pa.Table:
    """Convert published data to a pyarrow Table without view types.

    Raises :class:`SchemaError` naming the type when ``data`` is not one of
    :data:`ACCEPTED_TYPES` or cannot be converted.
    """
    if isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    else:
        pd_frame = _pandas_frame_type()
        pl_frame = _polars_frame_type()
        if pd_frame is not None and isinstance(data, pd_frame):
            try:
                table = pa.Table.from_pandas(data, preserve_index=False)
            except (pa.ArrowException, TypeError, ValueError) as e:
                raise SchemaError(f"cannot convert pandas.DataFrame to Arrow: {e}") from e
        elif pl_frame is not None and isinstance(data, pl_frame):
            try:
                table = data.to_arrow()  # type: ignore[attr-defined]
            except Exception as e:
                raise SchemaError(f"cannot convert polars.DataFrame to Arrow: {e}") from e
            if isinstance(table, pa.RecordBatch):
                table = pa.Table.from_batches([table])
        else:
            raise SchemaError(f"cannot publish a {_type_name(data)}: expected {ACCEPTED_TYPES}")
    return _normalize_table(table)


# --- view types -------------------------------------------------------------
# (pyarrow < 16 has no view types: the predicates are then always false.)


def _never(_t: pa.DataType) -> bool:
    return False


_is_string_view: Callable[[pa.DataType], bool] = getattr(pa.types, "is_string_view", _never)
_is_binary_view: Callable[[pa.DataType], bool] = getattr(pa.types, "is_binary_view", _never)
_is_list_view: Callable[[pa.DataType], bool] = getattr(pa.types, "is_list_view", _never)
_is_large_list_view: Callable[[pa.DataType], bool] = getattr(pa.types, "is_large_list_view", _never)


def _has_list_view(t: pa.DataType) -> bool:
    if _is_list_view(t) or _is_large_list_view(t):
        return True
    return any(_has_list_view(t.field(i).type) for i in range(t.num_fields))


def normalize_type(t: pa.DataType) -> pa.DataType:
    """``t`` with every view type replaced: string_view → large_string,
    binary_view → large_binary, (large_)list_view → large_list."""
    if _is_string_view(t):
        return pa.large_string()
    if _is_binary_view(t):
        return pa.large_binary()
    if _is_list_view(t) or _is_large_list_view(t):
        return pa.large_list(_normalize_field(t.value_field))
    if pa.types.is_dictionary(t):
        value = normalize_type(t.value_type)
        if value is t.value_type or value.equals(t.value_type):
            return t
        return pa.dictionary(t.index_type, value, t.ordered)
    if t.num_fields == 0:
        return t
    if pa.types.is_list(t):
        return pa.list_(_normalize_field(t.value_field))
    if pa.types.is_large_list(t):
        return pa.large_list(_normalize_field(t.value_field))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_normalize_field(t.value_field), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(_normalize_field(t.key_field), _normalize_field(t.item_field), t.keys_sorted)
    if pa.types.is_struct(t):
        return pa.struct([_normalize_field(t.field(i)) for i in range(t.num_fields)])
    return t  # unions, run-end encoded …: left to the host to accept or refuse


def _normalize_field(f: pa.Field) -> pa.Field:
    t = normalize_type(f.type)
    return f if t.equals(f.type) else f.with_type(t)


def _normalize_table(table: pa.Table) -> pa.Table:
    schema = table.schema
    changed = False
    for i, f in enumerate(schema):
        nf = _normalize_field(f)
        if nf is f:
            continue
        changed = True
        column = table.column(i)
        try:
            if _has_list_view(f.type):
                chunks = [_convert_array(chunk, nf.type) for chunk in column.chunks]
                new_column = pa.chunked_array(chunks, type=nf.type)
            else:
                new_column = column.cast(nf.type)
        except pa.ArrowException as e:
            raise SchemaError(f"cannot convert column {f.name!r} from {f.type} to {nf.type}: {e}") from e
        table = table.set_column(i, nf, new_column)
    return table.replace_schema_metadata(schema.metadata) if changed else table


def _convert_array(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Convert an array whose type holds a list_view (pyarrow's list_view → list
    cast produces invalid offsets, so it is rebuilt here)."""
    t = arr.type
    if _is_list_view(t) or _is_large_list_view(t):
        import pyarrow.compute as pc  # lazily: importing it costs ~60 ms per job

        values = pc.list_flatten(arr)  # the views' values in row order, nulls dropped
        values = _convert_array(values, target.value_type)
        sizes = pc.fill_null(pc.list_value_length(arr), 0).cast(pa.int64())
        offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(sizes)])
        mask = arr.is_null() if arr.null_count else None
        out = pa.LargeListArray.from_arrays(offsets, values, type=target, mask=mask)
        return out
    if not _has_list_view(t):
        return arr if t.equals(target) else arr.cast(target)
    # list_view nested below a struct, list or map: rare enough for the slow path.
    return pa.array(arr.to_pylist(), type=target)
