"""Fixtures every layer's tests share: a throwaway PostgreSQL server.

``pg_cluster`` starts one server for the whole run (`testbed.postgres`, fsync off) unless
``EIR_TEST_PG_URL`` names a server of yours; ``pg_url`` gives each test a database of its own,
dropped afterwards. Where PostgreSQL cannot run the tests that need it are skipped, except
under CI (``EIR_REQUIRE_INTEROP``), where a missing server is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testbed import postgres


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.PgCluster | None]:
    if os.environ.get("EIR_TEST_PG_URL"):
        yield None
        return
    why = postgres.unavailable_reason()
    if why is not None:
        if os.environ.get("EIR_REQUIRE_INTEROP") or os.environ.get("CI"):
            pytest.fail(f"PostgreSQL missing where it is required (CI/EIR_REQUIRE_INTEROP): {why}")
        pytest.skip(why)
    cluster = postgres.PgCluster(fast=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster: postgres.PgCluster | None) -> Iterator[str]:
    """A fresh, empty database: its ``postgresql://`` URL."""
    with postgres.scratch_database(pg_cluster, os.environ.get("EIR_TEST_PG_URL")) as url:
        yield url
