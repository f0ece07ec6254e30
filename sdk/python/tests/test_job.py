"""job.json parsing (BRIDGE.md §1): what the Go host writes must be accepted as is."""

from __future__ import annotations

from typing import Any

import pytest

from casparian_flow.bridge_shim import Job

BASE = {"socket": "/d/bridge.sock", "plugin_path": "/d/plugin.py", "input_path": "/data/in.csv"}


def test_go_shaped_spec_with_zero_values_takes_defaults() -> None:
    # Go marshals unset fields as zero values and a nil map as null.
    job = Job.from_json({**BASE, "plugin_name": "", "job_id": 0, "file_version_id": 0, "config": None,
                         "max_batch_bytes": 0, "max_frame_bytes": 0, "unknown_key": [1]})
    assert job.plugin_name == "plugin"
    assert job.config == {}
    assert job.max_batch_bytes == 64 << 20
    assert job.max_frame_bytes == 256 << 20


def test_full_spec() -> None:
    job = Job.from_json({**BASE, "plugin_name": "csv_processor", "job_id": 9_000_000_000, "file_version_id": 3,
                         "config": {"a": 1}, "max_batch_bytes": 1000, "max_frame_bytes": 5000})
    assert (job.plugin_name, job.job_id, job.file_version_id) == ("csv_processor", 9_000_000_000, 3)
    assert job.config == {"a": 1}
    assert (job.max_batch_bytes, job.max_frame_bytes) == (1000, 5000)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([], "not a JSON object"),
        ({"plugin_path": "/p", "input_path": "/i"}, "no 'socket'"),
        ({**BASE, "input_path": None}, "no 'input_path'"),
        ({**BASE, "job_id": "7"}, "'job_id' has the wrong type (str)"),
        ({**BASE, "job_id": True}, "'job_id' has the wrong type (bool)"),
        ({**BASE, "config": [1]}, "'config' has the wrong type (list)"),
    ],
)
def test_bad_specs(raw: Any, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        Job.from_json(raw)
    assert needle in str(info.value)
