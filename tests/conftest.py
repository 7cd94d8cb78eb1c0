"""Fixtures many test modules share: the knowledge, and an API key file the deploy accepts."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def kb():
    from gptoss_doctor import knowledge

    return knowledge.load()  # cached by load() itself: every module sees the same object


@pytest.fixture()
def key_file(tmp_path):
    p = tmp_path / "api-key"
    p.write_text("sk-test-0123456789\n")
    p.chmod(0o600)  # the deploy refuses a key file others can read
    return str(p)
