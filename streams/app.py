"""The Faust app of the monitoring worker: one agent per concern, topics as raw Avro bytes."""

from __future__ import annotations

import logging
from typing import Any

import faust

from suanwang.bus import dead_letter, make_codec
from suanwang.schemas.codec import Codec, DecodeError
from suanwang.schemas.topics import DEADLETTER, Topics, TopicSpec
from suanwang.settings import Settings
from suanwang.store import Store


class Context:
    """What the agents share: settings, codec, topic names, the store, and the dead-letter topic."""

    def __init__(self, app: faust.App, settings: Settings, store: Store) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        self.codec: Codec = make_codec(settings)
        self.topics = Topics(settings.topic_prefix)

    def topic(self, *specs: TopicSpec) -> faust.TopicT:
        return self.app.topic(*(self.topics.name(s) for s in specs), value_serializer="raw", key_serializer="raw")

    async def send(self, spec: TopicSpec, record: dict[str, Any]) -> None:
        await self.topic(spec).send(key=spec.key_of(record), value=self.codec.encode(spec.schema, record))

    def _record(self, ev: faust.EventT) -> dict[str, Any]:
        return self.codec.decode_as(self.topics.spec(ev.message.topic).schema, ev.value)

    def decode(self, ev: faust.EventT) -> dict[str, Any] | None:
        """The event's record, or None when it does not decode (the sink reports it: it reads every topic)."""
        try:
            return self._record(ev)
        except DecodeError:
            return None

    async def decode_or_dead_letter(self, ev: faust.EventT, component: str) -> dict[str, Any] | None:
        """The event's record; None after sending it to the dead letters when it cannot be decoded."""
        try:
            return self._record(ev)
        except DecodeError as exc:
            await self.send(DEADLETTER, dead_letter(component, ev.message, str(exc)))
            return None


def create_app(settings: Settings, store: Store) -> tuple[faust.App, Context]:
    """The worker's app with every agent registered."""
    from suanwang.streams import alerts, rollups, sink

    app = faust.App(
        "suanwang-worker",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_ms / 6000),
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
    )
    logging.getLogger("faust").setLevel(logging.WARNING)
    ctx = Context(app, settings, store)
    sink.register(ctx)
    alerts.register(ctx)
    rollups.register(ctx)
    return app, ctx
