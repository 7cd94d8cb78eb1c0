"""The cached base image: a debootstrapped Debian with systemd and sshd, as one tarball.

Building it takes minutes (debootstrap + apt), so the result is kept under CACHE_DIR/images,
keyed by everything that goes into it; every later start only unpacks it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from . import paths
from .errors import TestbedError, run

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"

# What a booted, reachable host needs.
BOOT_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2", "ca-certificates")
# What the deploy apt-installs anyway; baked in so deploys on the testbed do not wait on apt.
# The deploy engineer may import this list (or tell us theirs): keep it the one place.
DEPLOY_PACKAGES = ("curl", "procps", "python3-venv", "less", "sudo")
IMAGE_PACKAGES = tuple(sorted(set(BOOT_PACKAGES) | set(DEPLOY_PACKAGES)))

# What the controller machine needs to run the testbed: Debian package -> a command it provides.
CONTROLLER_PACKAGES = {
    "debootstrap": "debootstrap",
    "systemd-container": "systemd-nspawn",
    "openssh-client": "ssh-keygen",
    "zstd": "zstd",
}


def image_key(packages: tuple[str, ...] = IMAGE_PACKAGES, suite: str = SUITE, mirror: str = MIRROR) -> str:
    """A short digest of everything that changes the image's contents."""
    text = "\n".join([suite, "minbase", mirror, *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_path(key: str | None = None) -> Path:
    return paths.IMAGES_DIR / f"debian-{SUITE}-{key or image_key()}.tar.zst"


def ensure_image(log=print) -> tuple[Path, bool]:
    """The base image tarball, built if missing. Returns (path, built_now)."""
    target = image_path()
    if target.exists():
        return target, False
    paths.IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    work = paths.IMAGES_DIR / f".build-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    started = time.monotonic()
    try:
        log(f"building the base image {target.name} (debootstrap {SUITE} + {len(IMAGE_PACKAGES)} packages; minutes, once)")
        run(["debootstrap", "--variant=minbase", SUITE, str(work), MIRROR], "debootstrap", timeout=1200)
        _install_packages(work, IMAGE_PACKAGES)
        _scrub(work)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # two `up`s may build at once
        run(["tar", "--numeric-owner", "--xattrs", "-I", "zstd -T0 -3", "-cf", str(tmp), "-C", str(work), "."],
            "packing the base image", timeout=900)
        tmp.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"base image ready in {time.monotonic() - started:.0f} s: {target}")
    return target, True


def _install_packages(root: Path, packages: tuple[str, ...]) -> None:
    # policy-rc.d stops package scripts from starting services inside the build chroot.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    run(["chroot", str(root), "apt-get", "update"], "apt-get update in the image", timeout=600, env=env)
    run(["chroot", str(root), "apt-get", "install", "-y", "--no-install-recommends", *packages],
        f"apt-get install {' '.join(packages)} in the image", timeout=1800, env=env)
    run(["chroot", str(root), "apt-get", "clean"], "apt-get clean in the image", env=env)
    policy.unlink()


def _scrub(root: Path) -> None:
    """Remove what must differ per host; each host gets its own at unpack time."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()


def unpack(image: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    run(["tar", "--numeric-owner", "--xattrs", "-I", "zstd -T0", "-xf", str(image), "-C", str(dest)],
        f"unpacking {image.name} into {dest}", timeout=600)


def missing_controller_commands() -> list[str]:
    """Debian packages whose command is not on PATH here."""
    return [pkg for pkg, cmd in CONTROLLER_PACKAGES.items() if shutil.which(cmd) is None]


def install_controller_packages(log=print) -> None:
    """apt-get install what is missing, or say exactly which packages to install."""
    missing = missing_controller_commands()
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise TestbedError(f"missing packages {' '.join(missing)} and no apt-get here; install them and rerun `gptoss-testbed up`")
    log(f"installing {' '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(["apt-get", "update"], "apt-get update", timeout=600, env=env)
        run(["apt-get", "install", "-y", "--no-install-recommends", *missing], f"apt-get install {' '.join(missing)}",
            timeout=900, env=env)
    except TestbedError as e:
        raise TestbedError(f"could not install {' '.join(missing)} ({e}); install them by hand and rerun") from None
    still = missing_controller_commands()
    if still:
        raise TestbedError(f"packages {' '.join(still)} installed but their commands are still missing from PATH")
