"""The host: system packages (apt), the unprivileged service user, every directory the deploy uses."""

from __future__ import annotations

import os

from pyinfra.api import deploy
from pyinfra.operations import apt

from gptoss_doctor.layout import TIKTOKEN_DIR, UV_CACHE

from . import config as C
from .ops import ManagedDir, dirs_in_place, system_account


def directories(cfg: C.HostConfig) -> tuple[ManagedDir, ...]:
    svc = C.SERVICE_USER
    dirs = [
        ManagedDir(C.ROOT), ManagedDir(C.BIN_DIR), ManagedDir(C.STACKS_DIR),
        # /etc/gptoss holds the key: root writes, the service group reads, nobody else enters.
        ManagedDir(C.ETC, "root", svc, "0750"),
        ManagedDir(C.STACKS_D, "root", "root", "0755"),
        ManagedDir(C.STATE_DIR, svc, svc, "0750"),
        ManagedDir(C.CACHE_DIR, svc, svc, "0750"),
        ManagedDir(os.path.dirname(UV_CACHE), "root", "root", "0700"),
        ManagedDir(UV_CACHE, "root", "root", "0700"),
        ManagedDir(cfg.hf_home, svc, svc, "0750"),
    ]
    if cfg.tiktoken_url:
        dirs.append(ManagedDir(TIKTOKEN_DIR, "root", svc, "0750"))
    return tuple(dirs)


@deploy("gptoss host")
def apply(cfg: C.HostConfig):
    if cfg.missing_packages:
        # Only touch the apt cache when something is missing: a re-run stays a no-op.
        apt.packages(name="system packages", packages=list(cfg.missing_packages), update=True)
    system_account(name="service user (unprivileged, no login)", user=C.SERVICE_USER, home=C.STATE_DIR)
    dirs_in_place(name="directories", dirs=directories(cfg))
