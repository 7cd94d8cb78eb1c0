"""uv's managed CPython for a stack whose Python range the host's python3 misses
(deploys/gptoss_deploy/managed_python.py): when it applies, what the config then holds, and
that a mirror's credentials stay out of argv. The install on a real host is
tests/test_fleet_managed_python.py; the commands, tests/fixtures/operations/managed_python.*.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

from gptoss_deploy import config as C  # noqa: E402
from gptoss_deploy import managed_python as M  # noqa: E402
from gptoss_deploy import python_env  # noqa: E402

DEBIAN12 = {"os_id": "debian", "os_like": None, "os_pretty": "Debian GNU/Linux 12 (bookworm)", "arch": "x86_64",
            "python_path": "/usr/bin/python3", "python_version": "3.11.2", "gpus": [], "nvswitch_count": 0}
LAUNCH = "vllm-0.10.1-gptoss"  # the launch stack: Python >=3.12,<3.13


@pytest.mark.parametrize(("spec", "minor"), [(">=3.12,<3.13", "3.12"), (">=3.10,<3.15", "3.10"), ("==3.13.*", "3.13"),
                                             (">=3.11.5,<3.12", "3.11"), ("<3", None)])
def test_the_oldest_minor_the_range_admits(spec, minor):
    assert M.lowest_minor(spec) == minor


def test_only_where_the_host_python_misses_the_range():
    assert M.check("h", {}, DEBIAN12, ">=3.10,<3.14") is None
    assert M.check("h", {}, {**DEBIAN12, "python_version": None}, ">=3.12,<3.13") is None  # judged once it is installed
    assert M.check("h", {"gptoss_base_python": "/opt/conda/bin/python"}, DEBIAN12, ">=3.12,<3.13") is None
    got = M.check("h", {"gptoss_python_mirror": "file:///srv/pbs"}, DEBIAN12, ">=3.12,<3.13")
    assert got == M.ManagedPython("3.12", "file:///srv/pbs", None)


def test_air_gapped_without_a_mirror_is_one_line_naming_the_key():
    with pytest.raises(C.ConfigError) as e:
        M.check("gpu-07", {"gptoss_wheelhouse": "/srv/wheels"}, DEBIAN12, ">=3.12,<3.13")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("host gpu-07: gptoss_python_mirror")
    assert "3.11.2" in msg and ">=3.12,<3.13" in msg and "fix: " in msg


@pytest.mark.parametrize(("key", "value"), [("gptoss_python_mirror", "ftp://m.example/pbs"),
                                            ("gptoss_python_mirror", "/srv/pbs"),  # uv wants a URL here
                                            ("gptoss_python_mirror", 3),
                                            ("gptoss_python_downloads_json", "https:///no-host.json"),
                                            ("gptoss_python_downloads_json", "https://m.example/x.json\nB=1")])
def test_bad_locations_are_refused_even_when_unused(key, value):
    with pytest.raises(C.ConfigError) as e:
        M.check("h", {key: value}, DEBIAN12, ">=3.10,<3.14")
    assert str(e.value).startswith(f"host h: {key}=") and "fix: " in str(e.value)


def test_the_launch_stack_on_debian_12(kb, key_file):
    data = {"gptoss_stack": LAUNCH, "gptoss_gpu_family": "H100", "gptoss_api_key_file": key_file}
    cfg = C.validate("h", data, DEBIAN12, kb)
    assert cfg.managed_python == M.ManagedPython("3.12")
    assert cfg.python == "/usr/bin/python3"  # the doctor and gptoss-supervise keep the host's python3
    assert "--python 3.12" in python_env.new_venv(cfg).get_raw_value()
    mirrored = C.validate("h", {**data, "gptoss_python_mirror": "https://m.example/pbs"}, DEBIAN12, kb)
    assert python_env.spec_hash(mirrored) == python_env.spec_hash(cfg), "a mirror moves the source, not the venv"
    native = C.validate("h", data, {**DEBIAN12, "python_version": "3.12.3"}, kb)
    assert native.managed_python is None and python_env.spec_hash(native) != python_env.spec_hash(cfg)


def test_mirror_credentials_never_in_argv():
    managed = M.ManagedPython("3.12", "https://bob:s3cret@mirror.example/pbs", "https://bob:s3cret@mirror.example/d.json")
    cmd = M.install_command(python_env.UV_ENV, python_env.UV, managed)
    assert "s3cret" not in cmd.get_raw_value() and "mirror.example" not in cmd.get_raw_value()
    assert "UV_PYTHON_INSTALL_MIRROR=https://bob:s3cret@mirror.example/pbs\n" in cmd.connector_arguments["_stdin"]
