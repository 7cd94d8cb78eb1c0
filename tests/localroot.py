"""What a deploy to this machine (`pyinfra @local`) leaves behind, and undoing it.

The `@local` tests deploy to the machine that runs pytest. Left there, a deployment makes a later
`gptoss-doctor` on that machine judge a leftover service. `footprint()` lists what a deploy makes
(the deploy's paths, the service user and group); `undo(before)` stops a service a test started
and removes every part of the footprint that was not there before. conftest.py uses both: the
`local_host` fixture around each `@local` test, and a session check that fails the run when
anything new is left.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import shutil
import signal
import subprocess
import time

from gptoss_doctor import layout

USER = layout.SERVICE_USER
# Every path a deploy writes on a host outside the controller's own cache (gptoss_doctor/layout.py:
# the deploy's own dirs, the uv cache's dir, the doctor link, the unit; gpu.py's apt file), and
# the supervisor tests' own scratch dirs.
PATHS = (layout.ETC, layout.ROOT, layout.STATE_DIR, layout.LOG_DIR, layout.RUN_DIR, os.path.dirname(layout.UV_CACHE),
         layout.DOCTOR_LINK, "/etc/systemd/system/gptoss-*", "/etc/apt/apt.conf.d/*gptoss*",
         "/var/tmp/gptoss-supervisor-*")
SUPERVISOR = layout.SUPERVISE


def _exists(kind, name: str) -> bool:
    try:
        kind(name)
        return True
    except KeyError:
        return False


def footprint() -> set[str]:
    """What of a deployment is on this machine now: paths, and `user:gptoss` / `group:gptoss`."""
    found = {p for pattern in PATHS for p in glob.glob(pattern) if os.path.lexists(p)}
    if _exists(pwd.getpwnam, USER):
        found.add(f"user:{USER}")
    if _exists(grp.getgrnam, USER):
        found.add(f"group:{USER}")
    return found


def _service_user_pids(uid: int) -> list[int]:
    """This machine's processes of `uid`; not those of containers (the local fleet's hosts run
    their own services as a gptoss user of the same uid), whose root is another directory."""
    ours = os.stat("/")
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                root = os.stat(f"/proc/{entry}/root")
                if os.stat(f"/proc/{entry}").st_uid == uid and (root.st_dev, root.st_ino) == (ours.st_dev, ours.st_ino):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def undo(before: set[str]) -> None:
    """Remove what appeared since `before`: the supervised service stopped first, then the
    processes of a service user the test created (by pid), the paths, the user and the group."""
    new = footprint() - before
    if not new:
        return
    if "/opt/gptoss" in new and os.access(SUPERVISOR, os.X_OK):
        subprocess.run([SUPERVISOR, "stop"], capture_output=True, timeout=120)
    if f"user:{USER}" in new:
        uid = pwd.getpwnam(USER).pw_uid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _service_user_pids(uid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            for _ in range(50):
                if not _service_user_pids(uid):
                    break
                time.sleep(0.1)
        # --force: the fleet's container processes of the same uid would otherwise keep it
        subprocess.run(["userdel", "--force", USER], capture_output=True, timeout=60)
    if f"group:{USER}" in new and _exists(grp.getgrnam, USER):
        subprocess.run(["groupdel", USER], capture_output=True, timeout=60)
    for path in sorted(p for p in new if p.startswith("/")):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
