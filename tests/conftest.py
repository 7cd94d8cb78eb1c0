"""Fixtures many test modules share: the knowledge, and an API key file the deploy accepts."""

from __future__ import annotations

import os
import tempfile

import pytest

# The knowledge's parse cache goes to a folder of this run (removed at exit), not to the home of
# whoever runs the tests; subprocesses (the doctor's CLI) inherit it.
_KNOWLEDGE_CACHE = tempfile.TemporaryDirectory(prefix="gptoss-knowledge-cache-")
os.environ["GPTOSS_DOCTOR_CACHE"] = _KNOWLEDGE_CACHE.name


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
