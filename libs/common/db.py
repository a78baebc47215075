"""PostgreSQL: a pool per service in the service's own schema, and migrations.

Each service owns one schema (``broker``, ``lifecycle``, ``approvals``) and
its numbered SQL files (``<package>/migrations/NNN_name.sql``); migrations run
at start, each once, in its own transaction, under an advisory lock so that
two instances starting together do not race.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from hyperhive.common import retry
from hyperhive.common.config import DatabaseSettings
from hyperhive.common.errors import ConfigError, Unavailable

log = logging.getLogger(__name__)

_MIGRATION = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
_SCHEMA = re.compile(r"^[a-z][a-z0-9_]{0,30}$")

T = TypeVar("T")

# The migration sets applied in every service schema, in this order, each
# tracked in its own table: the tables all services share (the outbox), then
# the service's own. The tracking tables are the mechanism itself, so they are
# the only schema written here rather than in a numbered file.
COMMON_PACKAGE = "hyperhive.common"
COMMON_TRACKING = "common_migrations"
SERVICE_TRACKING = "schema_migrations"

_TRACKING_SQL = """
CREATE TABLE IF NOT EXISTS {table} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


async def create_pool(
    settings: DatabaseSettings, schema: str, *, keep_session: bool = False
) -> asyncpg.Pool:
    """Opens a pool whose connections use ``schema`` (created if missing).

    Args:
        keep_session: a connection goes back to the pool without asyncpg's
            reset query (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
            RESET ALL``), which costs a round trip per release; only for a
            service that leaves no session state on its connections (no
            ``SET``, ``LISTEN``, session advisory locks or cursors). A
            transaction left open is still rolled back.

    Raises:
        Unavailable: Postgres could not be reached after the configured retries.
    """
    if not _SCHEMA.match(schema):
        raise ConfigError(f"bad schema name {schema!r}")

    async def attempt() -> asyncpg.Pool:
        conn = await asyncpg.connect(settings.url, timeout=5)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        finally:
            await conn.close()
        return await asyncpg.create_pool(
            settings.url,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            server_settings={"search_path": schema},
            timeout=5,
            reset=_keep_session if keep_session else None,
        )

    # UniqueViolationError: two services created the schema at once; retry.
    return await _with_retries(settings, attempt, again=(asyncpg.UniqueViolationError,))


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The reset of a ``keep_session`` pool: nothing beyond asyncpg's rollback."""


async def probe(settings: DatabaseSettings) -> None:
    """Checks that Postgres answers (``SELECT 1``), with the configured retries.

    Raises:
        ConfigError: the URL is malformed.
        Unavailable: Postgres could not be reached after the configured retries.
    """

    async def attempt() -> None:
        try:
            conn = await asyncpg.connect(settings.url, timeout=5)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
        except (asyncpg.InterfaceError, ValueError) as exc:
            raise ConfigError(f"bad database URL {_redact(settings.url)}: {exc}") from None

    await _with_retries(settings, attempt)


async def _with_retries(
    settings: DatabaseSettings,
    attempt: Callable[[], Awaitable[T]],
    *,
    again: tuple[type[BaseException], ...] = (),
) -> T:
    """``attempt()``, tried up to ``connect_attempts`` times while Postgres cannot
    be reached, sleeping ``connect_backoff_s`` (doubling, at most 5 s) between tries.

    Args:
        again: errors after which the next try follows at once (no sleep); checked
            before the connection errors, and they count as a try.

    Raises:
        Unavailable: every try failed.
    """
    policy = retry.Backoff(settings.connect_backoff_s, retry.DB_CONNECT_CAP_S, jitter=False)
    tries = max(1, settings.connect_attempts)
    last: BaseException | None = None
    for n in range(1, tries + 1):
        try:
            return await attempt()
        except again:
            continue
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            last = exc
            if n < tries:
                await asyncio.sleep(policy.delay(n))
    raise _unreachable(settings, tries, last)


def _unreachable(settings: DatabaseSettings, tries: int, last: BaseException | None) -> Unavailable:
    return Unavailable(
        f"cannot reach PostgreSQL at {_redact(settings.url)} after {tries} attempts: "
        f"{str(last) or type(last).__name__}"
    )


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` means PostgreSQL cannot be used right now (down,
    restarting, the connection dropped), not that the request was wrong.

    For a request handler's top-level error translation: such an error
    becomes ``unavailable`` (worth retrying), not ``internal``.
    """
    if isinstance(exc, asyncpg.DataError):
        return False
    return isinstance(
        exc,
        ConnectionError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.OperatorInterventionError,
    )


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def load_migrations(package: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for each ``NNN_name.sql`` of ``package.migrations``."""
    found: list[tuple[int, str, str]] = []
    try:
        root = importlib.resources.files(package) / "migrations"
        entries = list(root.iterdir())
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        m = _MIGRATION.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"{package}: two migrations share a number")
    return found


async def migrate(pool: asyncpg.Pool, package: str) -> list[int]:
    """Applies the common migrations, then ``package``'s pending ones.

    Returns:
        The versions of ``package`` applied by this call (empty when all were
        applied before).
    """
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext(current_schema()))")
        try:
            await _apply(conn, COMMON_PACKAGE, COMMON_TRACKING)
            return await _apply(conn, package, SERVICE_TRACKING)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext(current_schema()))")


async def _apply(conn: asyncpg.Connection, package: str, tracking: str) -> list[int]:
    """Applies ``package``'s migrations not yet recorded in table ``tracking``."""
    await conn.execute(_TRACKING_SQL.format(table=tracking))
    done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {tracking}")}
    applied: list[int] = []
    for version, name, sql in load_migrations(package):
        if version in done:
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute(
                f"INSERT INTO {tracking} (version, name) VALUES ($1, $2)", version, name
            )
        applied.append(version)
        log.info("migration applied", extra={"package": package, "version": version})
    return applied
