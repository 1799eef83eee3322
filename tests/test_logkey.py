"""eir.logkey: the secret key behind pseudonyms in logs."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from eir.cli import setup_logging
from eir.logkey import KEY_BYTES, LogKeyError, load_or_create


def test_made_once_owner_only_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "eir.db.logkey"
    key = load_or_create(path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create(path) == key  # a restart keeps the pseudonyms
    assert load_or_create(tmp_path / "other.logkey") != key


def test_a_short_or_unwritable_key_is_a_clear_error(tmp_path: Path) -> None:
    short = tmp_path / "short.logkey"
    short.write_bytes(b"tiny")
    with pytest.raises(LogKeyError, match="at least 16"):
        load_or_create(short)
    with pytest.raises(LogKeyError, match="cannot be created"):
        load_or_create(tmp_path / "missing-dir" / "k")


def test_debug_logging_leaves_out_the_database_driver_parameters() -> None:
    """aiosqlite logs each statement with its parameters at debug: IMEIs in clear."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("debug", "text")
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("eir.decision").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("aiosqlite").setLevel(logging.NOTSET)
