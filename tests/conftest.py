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


# -- this machine as a deploy target (`pyinfra @local`) ------------------------------------------


@pytest.fixture()
def local_host():
    """For a test that deploys to this machine: whatever of a deployment it adds (tests/localroot.py)
    is undone afterwards, pass or fail."""
    import localroot

    before = localroot.footprint()
    yield
    localroot.undo(before)


@pytest.fixture()
def bare_local_host(local_host):
    """For a test that deploys to this machine from scratch: it wipes a deployment first, so it
    does not run where one is already here (a real one would be lost; the suite leaves none)."""
    import localroot

    here = sorted(localroot.footprint())
    if here:
        pytest.skip(f"this machine has a gptoss deployment ({', '.join(here)}) that the test would replace; "
                    f"run it where there is none")


@pytest.fixture(scope="session", autouse=True)
def machine_left_as_found():
    """The suite leaves this machine as it found it: no deployment (/etc/gptoss, /opt/gptoss,
    /var/lib/gptoss, the gptoss user, a gptoss-* unit, ...) that was not there before the run."""
    import localroot

    before = localroot.footprint()
    yield
    left = sorted(localroot.footprint() - before)
    assert not left, f"the test run left on this machine: {', '.join(left)}; a test that deploys here must use the local_host fixture"
