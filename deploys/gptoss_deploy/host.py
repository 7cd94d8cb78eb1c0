"""The host: system packages (apt), the unprivileged service user, directories."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files, server

from . import config as C

# python3 builds the venvs and runs the gates; ca-certificates for https indexes.
PACKAGES = ("python3", "ca-certificates")


def missing_packages(installed: dict, wanted: tuple[str, ...]) -> list[str]:
    return [p for p in wanted if p not in installed]


@deploy("gptoss host")
def apply(cfg: C.HostConfig):
    missing = missing_packages(host.get_fact(DebPackages) or {}, PACKAGES)
    if missing:
        # Only touch the apt cache when something is missing: a re-run stays a no-op.
        apt.packages(name="system packages", packages=missing, update=True)

    server.group(name="service group", group=C.SERVICE_USER, system=True)
    server.user(
        name="service user (unprivileged)",
        user=C.SERVICE_USER,
        group=C.SERVICE_USER,
        home=C.STATE_DIR,
        shell="/usr/sbin/nologin",
        system=True,
        create_home=False,
    )
    files.directory(name="/opt/gptoss", path=C.ROOT, user="root", group="root", mode="0755")
    # /etc/gptoss holds the key: root writes, the service group reads, nobody else enters.
    files.directory(name="/etc/gptoss", path=C.ETC, user="root", group=C.SERVICE_USER, mode="0750")
    files.directory(name="service state dir", path=C.STATE_DIR, user=C.SERVICE_USER, group=C.SERVICE_USER, mode="0750")
    files.directory(name="service cache dir", path=f"{C.STATE_DIR}/cache", user=C.SERVICE_USER, group=C.SERVICE_USER, mode="0750")
