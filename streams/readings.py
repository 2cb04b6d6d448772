"""A batch of node samples as columns: what the telemetry intake checks, stores, watches and sums.

Frames and single samples alike become one `Readings`, so each step is one NumPy pass (or one list pass)
over the batch and a ClickHouse column-oriented insert, not a Python call and a dict per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from suanwang.schemas.frames import COLUMNS, PLACE

INTEGER_COLUMNS = {"running_tasks"}


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


@dataclass
class Readings:
    """Samples column by column, each with the index of the Kafka event it came in (`origin`) and its
    index in that event's frame (`sample`; -1 for a single-sample record)."""

    event_ids: list[str]
    node_ids: list[str]
    places: dict[str, list[str]]  # hub, cluster and province of each sample
    event_ms: np.ndarray
    figures: dict[str, np.ndarray]  # each of `COLUMNS`
    origin: np.ndarray
    sample: np.ndarray

    @classmethod
    def of_frame(cls, frame: dict[str, Any], origin: int) -> Readings:
        """A sound frame's samples (`frame_problem` found none), the i-th with event id `<frame's>:<i>`."""
        n = len(frame["node_ids"])
        return cls(
            [f"{frame['event_id']}:{i}" for i in range(n)],
            frame["node_ids"],
            {name: [frame[name]] * n for name in PLACE},
            np.fromiter(map(_ms, frame["event_times"]), np.int64, n),
            {name: _column(name, frame[name]) for name in COLUMNS},
            np.full(n, origin, dtype=np.int64),
            np.arange(n, dtype=np.int64),
        )

    @classmethod
    def of_sample(cls, record: dict[str, Any], origin: int) -> Readings:
        """One `NodeTelemetry` record."""
        return cls(
            [record["event_id"]],
            [record["node_id"]],
            {name: [record[name]] for name in PLACE},
            np.array([_ms(record["event_time"])], dtype=np.int64),
            {name: _column(name, [record[name]]) for name in COLUMNS},
            np.array([origin], dtype=np.int64),
            np.array([-1], dtype=np.int64),
        )

    @classmethod
    def concat(cls, parts: Sequence[Readings]) -> Readings:
        """The parts one after another (an empty batch when there are none)."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            none = np.zeros(0, dtype=np.int64)
            return cls([], [], {name: [] for name in PLACE}, none, {n: _column(n, []) for n in COLUMNS}, none, none)
        return cls(
            [e for p in parts for e in p.event_ids],
            [n for p in parts for n in p.node_ids],
            {name: [v for p in parts for v in p.places[name]] for name in PLACE},
            np.concatenate([p.event_ms for p in parts]),
            {name: np.concatenate([p.figures[name] for p in parts]) for name in COLUMNS},
            np.concatenate([p.origin for p in parts]),
            np.concatenate([p.sample for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.node_ids)

    def take(self, keep: np.ndarray) -> Readings:
        """The samples where the boolean mask `keep` is set, in order."""
        if keep.all():
            return self
        index = np.flatnonzero(keep)
        pick = index.tolist()
        return Readings(
            [self.event_ids[i] for i in pick],
            [self.node_ids[i] for i in pick],
            {name: [values[i] for i in pick] for name, values in self.places.items()},
            self.event_ms[index],
            {name: values[index] for name, values in self.figures.items()},
            self.origin[index],
            self.sample[index],
        )

    def record(self, i: int) -> dict[str, Any]:
        """Sample `i` as a `NodeTelemetry` record (a bad sample of a frame is dead-lettered as one)."""
        return {
            "event_id": self.event_ids[i],
            "event_time": int(self.event_ms[i]),
            "node_id": self.node_ids[i],
            **{name: values[i] for name, values in self.places.items()},
            **{name: values[i].item() for name, values in self.figures.items()},
        }

    def columns(self) -> dict[str, Sequence[Any]]:
        """The `telemetry` table's columns of these samples, for a column-oriented insert."""
        return {
            "event_id": self.event_ids,
            "event_time": self.event_ms.tolist(),  # milliseconds: DateTime64(3) takes them as they are
            "node_id": self.node_ids,
            **self.places,
            **self.figures,
        }

    def event_time(self, i: int) -> datetime:
        return datetime.fromtimestamp(int(self.event_ms[i]) / 1000, UTC)


def _column(name: str, values: Sequence[Any]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32 if name in INTEGER_COLUMNS else np.float64)
