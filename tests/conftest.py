"""Set-up shared by the unit tests."""

import pytest

from helpers import runtime


@pytest.fixture(autouse=True)
def quick_mode(monkeypatch):
    # The unit tests are written for quick mode. The root conftest.py sets it only where the caller
    # has not set COURSE_QUICK, so set it here too: a reader's COURSE_QUICK=0 must not turn them
    # into full runs. A test that wants full mode sets it again after this.
    monkeypatch.setenv(runtime.QUICK_ENV, "1")
