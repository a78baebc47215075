"""Migrations run once per schema, in order, under a lock; pools use their schema."""

import asyncio
import sys

import pytest

from hyperhive.common.db import create_pool, migrate
from hyperhive.common.errors import ConfigError, Unavailable


@pytest.fixture
def migrations_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fakesvc_migs"
    (pkg / "migrations").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "migrations" / "001_create.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (pkg / "migrations" / "002_seed.sql").write_text("INSERT INTO things VALUES (1), (2);")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    sys.modules.pop("fakesvc_migs", None)


async def test_migrations_apply_once(settings, migrations_package):
    pool = await create_pool(settings.database, "svc_a")
    try:
        assert await migrate(pool, "fakesvc_migs") == [1, 2]
        assert await migrate(pool, "fakesvc_migs") == []
        assert await pool.fetchval("SELECT count(*) FROM things") == 2
        (migrations_package / "migrations" / "003_more.sql").write_text(
            "INSERT INTO things VALUES (3);"
        )
        assert await migrate(pool, "fakesvc_migs") == [3]
        assert await pool.fetchval("SELECT count(*) FROM things") == 3
    finally:
        await pool.close()


async def test_every_schema_gets_the_common_outbox(settings, migrations_package):
    pool = await create_pool(settings.database, "svc_outbox")
    try:
        await migrate(pool, "fakesvc_migs")
        cols = await pool.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'svc_outbox' AND table_name = 'outbox'"
        )
        assert {"id", "subject", "payload", "msg_id", "created_at", "traceparent"} <= {
            r["column_name"] for r in cols
        }
        assert [
            r["version"]
            for r in await pool.fetch("SELECT version FROM common_migrations ORDER BY version")
        ] == [1, 2]
    finally:
        await pool.close()


async def test_a_schema_from_before_common_migrations_upgrades(settings, migrations_package):
    """A schema made when the outbox was written inline (no common_migrations
    table yet, outbox already there with rows) keeps its rows and versions."""
    pool = await create_pool(settings.database, "svc_old")
    try:
        await pool.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now());"
            "INSERT INTO schema_migrations (version, name) VALUES (1, 'create');"
            "CREATE TABLE things (id int PRIMARY KEY);"
            "CREATE TABLE outbox (id bigserial PRIMARY KEY, subject text NOT NULL,"
            " payload bytea NOT NULL, msg_id text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now(), traceparent text);"
            "INSERT INTO outbox (subject, payload, msg_id) VALUES ('s', 'p', 'm');"
        )
        assert await migrate(pool, "fakesvc_migs") == [2]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    finally:
        await pool.close()


async def test_concurrent_starts_apply_each_migration_once(settings, migrations_package):
    pools = [await create_pool(settings.database, "svc_b") for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(p, "fakesvc_migs") for p in pools))
        assert sorted(v for r in results for v in r) == [1, 2]
        assert await pools[0].fetchval("SELECT count(*) FROM things") == 2
    finally:
        for p in pools:
            await p.close()


async def test_schemas_keep_services_apart(settings, migrations_package):
    a = await create_pool(settings.database, "svc_c")
    b = await create_pool(settings.database, "svc_d")
    try:
        await migrate(a, "fakesvc_migs")
        await migrate(b, "fakesvc_migs")
        await a.execute("DELETE FROM things")
        assert await b.fetchval("SELECT count(*) FROM things") == 2
    finally:
        await a.close()
        await b.close()


async def test_duplicate_migration_numbers_are_refused(settings, migrations_package):
    (migrations_package / "migrations" / "002_other.sql").write_text("SELECT 1;")
    pool = await create_pool(settings.database, "svc_e")
    try:
        with pytest.raises(ConfigError, match="share a number"):
            await migrate(pool, "fakesvc_migs")
    finally:
        await pool.close()


async def test_unreachable_postgres_is_unavailable_without_the_password(settings):
    from hyperhive.cli.embedded import free_port
    from hyperhive.common.config import DatabaseSettings

    db = DatabaseSettings(
        url=f"postgresql://u:secret@127.0.0.1:{free_port()}/x",
        connect_attempts=2,
        connect_backoff_s=0.05,
    )
    with pytest.raises(Unavailable) as info:
        await create_pool(db, "svc_f")
    assert "after 2 attempts" in str(info.value)
    assert "secret" not in str(info.value)
