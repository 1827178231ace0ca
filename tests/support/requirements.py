"""Skip or fail: a missing tool is a reason to skip on a developer's machine, an error in CI.

``CHATBOT_REQUIRE_<WHAT>=1`` (or ``0``) decides; without it, ``CI`` being set does.
"""

from __future__ import annotations

import os
from typing import NoReturn


def required(env: str) -> bool:
    """Whether what ``env`` names must be there (missing: an error, not a skip)."""
    flag = os.environ.get(env, "").strip().lower()
    if flag:
        return flag not in ("0", "false", "no")
    return bool(os.environ.get("CI"))


def unavailable(msg: str, env: str) -> NoReturn:
    """Fail the test when ``env`` says the tool is required, else skip it."""
    import pytest

    if required(env):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)
