"""JetStream streams and the KV bucket, created or updated idempotently."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from hyperhive.common import subjects

DAY_S = 86_400.0


def stream_configs() -> list[StreamConfig]:
    return [
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=30 * DAY_S,
            max_msgs=1_000_000,
            duplicate_window=120.0,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=subjects.TURNS_STREAM,
            subjects=[subjects.AGENT_EVENTS_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_msgs_per_subject=5_000,
            max_age=14 * DAY_S,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=subjects.DELIVERIES_STREAM,
            subjects=[subjects.DELIVERIES],
            # a queue, not a log: a record goes once the broker acked its insert
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=30 * DAY_S,
            duplicate_window=120.0,
            discard=DiscardPolicy.OLD,
        ),
    ]


async def ensure_streams(js: JetStreamContext) -> None:
    """Creates ``HIVE_EVENTS``, ``HIVE_TURNS`` and ``HIVE_DELIVERIES`` (or updates
    their config)."""
    for config in stream_configs():
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError:
                pass  # created concurrently by another service
            continue
        await js.update_stream(config)


async def ensure_state_bucket(js: JetStreamContext) -> KeyValue:
    """The KV bucket for transient container flags and harness heartbeats."""
    try:
        return await js.key_value(subjects.STATE_BUCKET)
    except (NotFoundError, BadRequestError):
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(bucket=subjects.STATE_BUCKET, history=1, storage=StorageType.FILE)
        )
    except BadRequestError:
        return await js.key_value(subjects.STATE_BUCKET)
