"""Bad-input campaigns: property-based tests and a fuzzer over the Avro decoder, the task-request checker and the
trace CSV parser, and fuzzed payloads through a real worker: nothing crashes, nothing is lost."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import string
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suanwang.api.submit import BadRequest, task_request
from suanwang.bus import EventProducer, ensure_topics
from suanwang.schemas.codec import Codec, DecodeError, schema_sources
from suanwang.schemas.topics import TELEMETRY, Topics
from suanwang.settings import Settings
from suanwang.simulator.trace import TASK_COLUMNS, read_tasks
from suanwang.store import Store
from suanwang.streams.app import create_app
from tests.evidence import wait_for
from tests.fleet import closed_minute, fleet, register, send_raw, send_telemetry, telemetry
from tests.samples import sample_record

CODEC = Codec()
SCHEMAS = sorted(schema_sources())
VALID = {name: CODEC.encode(name, sample_record(name)) for name in SCHEMAS}


def mutations(seed: int, count: int) -> list[bytes]:
    """Payloads a broken or hostile producer might send: noise, cuts, flipped bytes, foreign ids, other schemas."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        base = VALID[rng.choice(SCHEMAS)]
        kind = rng.randrange(5)
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 64)))
        elif kind == 1:
            out.append(base[: rng.randrange(len(base))])
        elif kind == 2:
            flipped = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            out.append(bytes(flipped))
        elif kind == 3:
            out.append(struct.pack(">bI", 0, rng.randrange(2**32)) + base[5:])
        else:
            out.append(base)  # a well-formed record of some schema, perhaps not the topic's
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from(SCHEMAS).flatmap(lambda n: st.integers(0, len(VALID[n]) - 1).map(lambda i: VALID[n][:i])),
        st.tuples(st.sampled_from(SCHEMAS), st.integers(0, 2**32 - 1)).map(
            lambda t: struct.pack(">bI", 0, t[1]) + VALID[t[0]][5:]
        ),
        st.tuples(st.sampled_from(SCHEMAS), st.binary(min_size=1, max_size=40)).map(lambda t: VALID[t[0]][:5] + t[1]),
    )
)
def test_the_decoder_fails_only_with_a_decode_error(payload: bytes) -> None:
    """Random, truncated, foreign-id and wrong-body payloads: a record or a DecodeError, never anything else."""
    try:
        CODEC.decode_as("NodeTelemetry", payload)
    except DecodeError as exc:
        assert str(exc)  # the reason the dead letter will carry


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
TASK_FIELDS = [f["name"] for f in schema_sources()["TaskRequest"]["fields"]]
GOOD_TASK = {
    "tenant": "t", "industry": "genomics", "kind": "genomics", "origin_hub": "yangtze", "origin_province": "Shanghai",
    "chip_archs": ["x86_64"], "cpu_milli": 1000, "memory_mib": 1024, "data_hub": "yangtze", "duration_s": 60.0,
    "deadline": "2026-12-01T00:00:00+00:00",
}  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*TASK_FIELDS, "colour"]), JSON, max_size=6), st.booleans())
def test_a_task_request_passes_the_api_only_if_avro_can_encode_it(changes: dict[str, Any], from_good: bool) -> None:
    """Whatever the checker lets through is a record the Avro writer takes; the rest is a 422 naming fields."""
    body = (GOOD_TASK if from_good else {}) | changes
    try:
        record = task_request(body)
    except BadRequest as bad:
        assert bad.problems and all(isinstance(v, str) and v for v in bad.problems.values())
        return
    assert CODEC.decode_as("TaskRequest", CODEC.encode("TaskRequest", record))["task_id"] == record["task_id"]


@pytest.mark.parametrize("deadline", [2**62, -(2**62), "9999-12-31T23:59:59-14:00", float("inf")])
def test_a_deadline_avro_could_write_but_not_read_back_is_refused_naming_it(deadline: Any) -> None:
    """A long the writer takes but no reader can turn back into a date (hypothesis found 2**62-odd ms)."""
    with pytest.raises(BadRequest) as bad:
        task_request(GOOD_TASK | {"deadline": deadline})
    assert bad.value.problems == {"deadline": f"{deadline!r} is not a time between the years 1 and 9999"}


CELL = st.text(alphabet=string.ascii_letters + string.digits + " -.,|\"'\n", max_size=10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(CELL, min_size=1, max_size=len(TASK_COLUMNS) + 2), max_size=12))
def test_every_trace_row_is_parsed_or_skipped_with_its_line(tmp_path: Path, rows: list[list[str]]) -> None:
    """Any CSV body under a valid header: each row either parses or is reported with file, line and column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(TASK_COLUMNS)
    writer.writerows(rows)
    path = tmp_path / "tasks.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    parsed = read_tasks(path)
    assert len(parsed.rows) + len(parsed.errors) == len(rows)
    for error in parsed.errors:
        assert str(error).startswith("tasks.csv:")


def test_fuzzed_payloads_each_end_stored_or_dead_lettered_and_the_stream_flows(
    settings: Settings, store: Store
) -> None:
    """200 mutated payloads between good telemetry: every message is accounted for once, every good one stored."""
    topic = Topics(settings.topic_prefix).name(TELEMETRY)
    regs = fleet(6)
    end = closed_minute()
    good = [telemetry(reg, end - 60_000 + i * 10_000) for reg in regs for i in range(6)]
    fuzz = mutations(seed=8, count=200)

    def scalar(sql: str) -> int:
        return store.query(sql, {"t": topic})[1][0][0]

    stored = "SELECT count() FROM suanwang.telemetry WHERE kafka_topic = {t:String}"
    dead = "SELECT count() FROM suanwang.dead_letters FINAL WHERE source_topic = {t:String}"
    reasons = "SELECT countIf(error = '') FROM suanwang.dead_letters FINAL WHERE source_topic = {t:String}"

    async def scenario() -> None:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        await register(producer, regs)
        await send_telemetry(producer, good[:18])
        await send_raw(settings, topic, fuzz, "fuzz-")
        await send_telemetry(producer, good[18:])
        await producer.stop()
        app, _ctx = create_app(settings, store)
        await app.start()
        try:
            assert await wait_for(lambda: scalar(stored) + scalar(dead) == len(good) + len(fuzz))
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert scalar(stored) + scalar(dead) == len(good) + len(fuzz)  # nothing lost, nothing doubled
    assert scalar(stored) >= len(good) and scalar(dead) >= len(fuzz) // 2
    assert scalar(reasons) == 0  # every dead letter says why
