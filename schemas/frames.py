"""Collector frames (`TelemetryFrame`): one cluster's node samples for one interval, column by column.

Made here from `NodeTelemetry` samples (by the simulator and the benches), and taken apart here into them
again for a reader that wants records (`up`'s monitor). The worker reads a frame as columns
(`streams/readings.py`): its samples go through the same checks, dead letters, sink and windows as single
samples.
"""

from __future__ import annotations

from typing import Any

PLACE = ("hub", "cluster", "province")  # one value a frame: every sample of it is of one cluster
COLUMNS = ("cpu_util", "memory_util", "accelerator_util", "power_kw", "inlet_temp_c", "running_tasks")


def frame_of(samples: list[dict[str, Any]], event_id: str, sent_ms: int) -> dict[str, Any]:
    """The frame of samples of one cluster (each node once), sent at `sent_ms`."""
    first = samples[0]
    return {
        "event_id": event_id,
        "event_time": sent_ms,
        **{name: first[name] for name in PLACE},
        "node_ids": [s["node_id"] for s in samples],
        "event_times": [s["event_time"] for s in samples],
        **{name: [s[name] for s in samples] for name in COLUMNS},
    }


def frame_problem(frame: dict[str, Any]) -> str | None:
    """Why a frame cannot be taken apart (its arrays differ in length, a node comes twice), or None."""
    n = len(frame["node_ids"])
    for name in ("event_times", *COLUMNS):
        if len(frame[name]) != n:
            return f"{name}: {len(frame[name])} entries for {n} node_ids"
    if len(set(frame["node_ids"])) != n:
        seen: set[str] = set()
        twice = next(node for node in frame["node_ids"] if node in seen or seen.add(node))
        return f"node_ids: {twice!r} twice in one frame"
    return None


def samples_of(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """A sound frame's samples as `NodeTelemetry` records, the i-th with event id `<frame's>:<i>`."""
    place = {name: frame[name] for name in PLACE}
    columns = [frame[name] for name in COLUMNS]
    return [
        {
            "event_id": f"{frame['event_id']}:{i}",
            "event_time": frame["event_times"][i],
            "node_id": node,
            **place,
            **dict(zip(COLUMNS, (column[i] for column in columns), strict=True)),
        }
        for i, node in enumerate(frame["node_ids"])
    ]
