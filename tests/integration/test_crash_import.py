"""kill -9 at points spread over a 200,000-row import (testbed/crash_import.py).

After every kill the registry's export is exactly the one before the import
or exactly the one after it, and the file passes ``quick_check``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed import crash_import

pytestmark = pytest.mark.timeout(240)


def test_kill_9_during_an_import_leaves_before_or_after(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    out = tmp_path / "crash.json"
    code = crash_import.main(["--rows", "200000", "--kills", "7", "--work", str(tmp_path),
                              "--json-out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0, capsys.readouterr().err
    assert result["kills"] == 7 and result["neither"] == 0 and result["damaged"] == 0
    assert result["before"] + result["after"] == 7
    assert result["before"] >= 1  # kills early in the import cannot have seen the commit
