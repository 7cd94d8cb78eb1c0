"""Collectors against fake roots: real files in tmp_path, real executables on the box's PATH.

The `nvidia-smi`, `nvcc`, `amd-smi` and `systemctl` written here are stand-ins (shell scripts
printing what the real tools print); this machine has no GPU. Everything else is real files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gptoss_doctor.collect import Env, VenvError, collect
from gptoss_doctor.collect import cuda, gpu, host, service, venv
from gptoss_doctor.collect.files import offline_files, world_readable_secrets
from fakeroot import Box

H200_CSV = "0, NVIDIA H200, GPU-1111-2222, 9.0, 143771, 0, Enabled, 580.159.04\n1, NVIDIA H200, GPU-3333, 9.0, 143771, 0, Enabled, 580.159.04\n"
PROC_VERSION = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U16)  Thu Sep 4 2025\n"
    "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04)\n"
)
NVIDIA_SMI_HEADER = "| NVIDIA-SMI 580.159.04    Driver Version: 580.159.04     CUDA Version: 13.0     |\n"


@pytest.fixture
def box(tmp_path):
    return Box(tmp_path / "root")


def nvidia_smi_standin(csv: str = H200_CSV, rc: int = 0) -> str:
    return (
        'case "$1" in --query-gpu=*) printf \'%s\' "$CSV";; *) printf \'%s\' "$HEADER";; esac\n'
        f"exit {rc}"
    ).replace("$CSV", csv.replace("'", "")).replace("$HEADER", NVIDIA_SMI_HEADER)


# -- host ---------------------------------------------------------------------------------------


def test_host_facts(box):
    box.write("/etc/os-release", 'ID=ubuntu\nVERSION_ID="24.04"\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\n')
    box.write("/etc/hostname", "gpu-01\n")
    (box.root / "run/systemd/system").mkdir(parents=True)
    (box.root / "dev/shm").mkdir(parents=True)
    env = box.env()
    assert host.os_release(env)["host.os"]["value"] == {"id": "ubuntu", "version_id": "24.04", "pretty_name": "Ubuntu 24.04.1 LTS"}
    assert host.hostname(env)["host.hostname"]["value"] == "gpu-01"
    assert host.systemd(env)["host.systemd"]["value"] is True
    assert host.shm(env)["host.shm_bytes"]["value"] > 0


def test_no_systemd_and_no_os_release(box):
    env = box.env()
    assert "absent" in host.os_release(env)["host.os"]
    assert host.systemd(env)["host.systemd"]["value"] is False


# -- NVIDIA ---------------------------------------------------------------------------------------


def test_nvidia_gpus_driver_and_cuda(box):
    box.write("/proc/driver/nvidia/version", PROC_VERSION)
    box.tool("nvidia-smi", nvidia_smi_standin())
    env = box.env()
    facts = gpu.nvidia_gpus(env)
    gpus = facts["nvidia.gpus"]["value"]
    assert [g["index"] for g in gpus] == [0, 1]
    assert gpus[0] == {
        "index": 0, "name": "NVIDIA H200", "uuid": "GPU-1111-2222", "compute_cap": "9.0",
        "memory_mib": 143771, "memory_used_mib": 0, "persistence_mode": "Enabled",
    }
    assert facts["nvidia.driver"] == {"value": {"version": "580.159.04"}, "source": "/proc/driver/nvidia/version"}
    assert gpu.nvidia_cuda_max(env)["nvidia.cuda_driver_max"]["value"] == "13.0"


def test_driver_from_nvidia_smi_when_proc_is_missing(box):
    box.tool("nvidia-smi", nvidia_smi_standin())
    facts = gpu.nvidia_gpus(box.env())
    assert facts["nvidia.driver"]["value"] == {"version": "580.159.04"}
    assert "nvidia-smi" in facts["nvidia.driver"]["source"]


def test_nvidia_smi_failing_is_a_failed_fact_with_its_message(box):
    box.write("/proc/driver/nvidia/version", PROC_VERSION)
    box.tool("nvidia-smi", "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.' >&2; exit 9")
    facts = gpu.nvidia_gpus(box.env())
    assert "could not communicate" in facts["nvidia.gpus"]["failed"]
    assert "exited 9" in facts["nvidia.gpus"]["failed"]
    # the driver version still came from /proc
    assert facts["nvidia.driver"]["value"]["version"] == "580.159.04"


def test_no_driver_at_all_is_absent(box):
    facts = gpu.nvidia_gpus(box.env())
    assert "no NVIDIA driver" in facts["nvidia.gpus"]["absent"]
    assert "absent" in gpu.nvidia_cuda_max(box.env())["nvidia.cuda_driver_max"]


def test_hanging_nvidia_smi_times_out(box):
    box.tool("nvidia-smi", "sleep 5")
    env = Env(root=box.root, environ=box.environ, timeout_s=0.3)
    facts = gpu.nvidia_gpus(env)
    assert "did not finish in 0.3 s" in facts["nvidia.gpus"]["failed"]


def test_nvswitch_and_fabric_manager(box):
    for i in range(4):
        box.write(f"/proc/driver/nvidia-nvswitch/devices/0000:0{i}:00.0", "")
    (box.root / "run/systemd/system").mkdir(parents=True)
    box.tool("nv-fabricmanager", 'echo "Fabric Manager version is : 570.133.20"')
    box.tool("systemctl", 'echo inactive; exit 3')
    env = box.env()
    assert gpu.nvswitch(env)["nvidia.nvswitch"]["value"] == {"count": 4}
    assert gpu.fabric_manager(env)["nvidia.fabric_manager"]["value"] == {"installed": True, "active": False, "version": "570.133.20"}


def test_no_fabric_manager(box):
    assert gpu.fabric_manager(box.env())["nvidia.fabric_manager"]["value"]["installed"] is False
    assert gpu.nvswitch(box.env())["nvidia.nvswitch"]["value"] == {"count": 0}


# -- ROCm -----------------------------------------------------------------------------------------


def test_rocm_version_and_amd_smi(box):
    box.write("/opt/rocm/.info/version", "6.4.1-120\n")
    rows = [{"gpu": 0, "asic": {"market_name": "AMD Instinct MI300X", "target_graphics_version": "gfx942"},
             "vram": {"size": {"value": 196592, "unit": "MB"}}}]
    box.tool("amd-smi", f"echo '{json.dumps(rows)}'")
    env = box.env()
    assert gpu.rocm_version(env)["rocm.version"]["value"] == "6.4.1"
    assert gpu.rocm_gpus(env)["rocm.gpus"]["value"] == [
        {"index": 0, "name": "AMD Instinct MI300X", "gfx": "gfx942", "memory_mib": 196592}
    ]


def test_rocm_smi_fallback(box):
    data = {"card0": {"Card Series": "AMD Instinct MI325X", "GFX Version": "gfx942", "VRAM Total Memory (B)": str(256 * 2**30)}}
    box.tool("rocm-smi", f"echo '{json.dumps(data)}'")
    got = gpu.rocm_gpus(box.env())["rocm.gpus"]["value"]
    assert got == [{"index": 0, "name": "AMD Instinct MI325X", "gfx": "gfx942", "memory_mib": 256 * 1024}]


# -- CUDA_HOME ------------------------------------------------------------------------------------


def cuda_toolkit(box: Box, home: str, version: str, version_json: bool = True) -> None:
    box.tool("nvcc", f'echo "Cuda compilation tools, release {version}, V{version}.88"', where=f"{home}/bin")
    box.write(f"{home}/include/cuda.h", "/* header */")
    if version_json:
        box.write(f"{home}/version.json", json.dumps({"cuda": {"name": "CUDA SDK", "version": f"{version}.1"}}))


def test_cuda_home_from_env_var_with_version_json(box):
    cuda_toolkit(box, "/opt/cuda-12.8", "12.8")
    got = cuda.cuda_home(box.env(CUDA_HOME="/opt/cuda-12.8"))["cuda_home"]["value"]
    assert got["rule"] == "CUDA_HOME" and got["path"] == "/opt/cuda-12.8"
    assert (got["exists"], got["version"], got["version_from"], got["has_cuda_h"]) == (True, "12.8", "version.json", True)
    assert got["nvcc"] == "/opt/cuda-12.8/bin/nvcc"


def test_cuda_path_then_nvcc_on_path_then_default(box):
    cuda_toolkit(box, "/usr/local/cuda-13.0", "13.0", version_json=False)
    cuda_toolkit(box, "/usr/local/cuda", "12.9", version_json=False)
    # CUDA_PATH, when CUDA_HOME is unset
    got = cuda.cuda_home(box.env(CUDA_PATH="/usr/local/cuda-13.0"))["cuda_home"]["value"]
    assert (got["rule"], got["version"], got["version_from"]) == ("CUDA_PATH", "13.0", "nvcc")
    # nvcc on PATH beats /usr/local/cuda
    env = box.env(PATH="/usr/bin:/usr/local/cuda-13.0/bin")
    got = cuda.cuda_home(env)["cuda_home"]["value"]
    assert (got["rule"], got["path"]) == ("nvcc-on-PATH", "/usr/local/cuda-13.0")
    # neither: the default directory
    got = cuda.cuda_home(box.env())["cuda_home"]["value"]
    assert (got["rule"], got["path"], got["version"]) == ("/usr/local/cuda", "/usr/local/cuda", "12.9")


def test_cuda_home_pointing_nowhere(box):
    got = cuda.cuda_home(box.env(CUDA_HOME="/opt/missing"))["cuda_home"]["value"]
    assert (got["exists"], got["nvcc"], got["version"]) == (False, None, None)


def test_wrapper_nvcc_gives_a_home_without_headers(box):
    # a /usr/local/bin/nvcc wrapper: torch takes /usr/local as CUDA_HOME
    cuda_toolkit(box, "/usr/local/cuda-13.0", "13.0", version_json=False)
    box.tool("nvcc", 'exec "$(dirname "$0")/../cuda-13.0/bin/nvcc" "$@"', where="/usr/local/bin")
    got = cuda.cuda_home(box.env(PATH="/usr/local/bin:/usr/bin"))["cuda_home"]["value"]
    assert (got["path"], got["has_cuda_h"]) == ("/usr/local", False)


def test_no_cuda_at_all(box):
    assert "absent" in cuda.cuda_home(box.env())["cuda_home"]


def test_service_cuda_home_comes_from_the_services_environment(box):
    """The shell exports CUDA_HOME=13.0; the unit's EnvironmentFile says 12.8: the service's fact
    says 12.8, from the unit, while the shell's still says 13.0."""
    cuda_toolkit(box, "/usr/local/cuda-13.0", "13.0")
    cuda_toolkit(box, "/usr/local/cuda-12.8", "12.8")
    box.write("/etc/systemd/system/gptoss-vllm.service",
              "[Service]\nEnvironmentFile=/etc/gptoss/gptoss.env\nExecStart=/usr/bin/vllm serve m\n")
    box.write("/etc/gptoss/gptoss.env", "CUDA_HOME=/usr/local/cuda-12.8\n", 0o640)
    env = box.env(CUDA_HOME="/usr/local/cuda-13.0")
    assert cuda.cuda_home(env)["cuda_home"]["value"]["version"] == "13.0"
    fact = service.service_facts(env)["service.cuda_home"]
    assert (fact["value"]["path"], fact["value"]["rule"], fact["value"]["version"]) == ("/usr/local/cuda-12.8", "CUDA_HOME", "12.8")
    assert fact["source"].startswith("/etc/systemd/system/gptoss-vllm.service")


def test_service_without_cuda_home_searches_systemds_path_not_the_shells(box):
    """nvcc on the shell's PATH only: the service (systemd's default PATH) falls through to
    /usr/local/cuda, as torch in the service would."""
    cuda_toolkit(box, "/opt/cuda-13.0", "13.0", version_json=False)
    cuda_toolkit(box, "/usr/local/cuda", "12.9", version_json=False)
    box.write("/etc/systemd/system/gptoss-vllm.service", "[Service]\nExecStart=/usr/bin/vllm serve m\n")
    env = box.env(PATH="/usr/bin:/opt/cuda-13.0/bin")
    assert cuda.cuda_home(env)["cuda_home"]["value"]["rule"] == "nvcc-on-PATH"
    got = service.service_facts(env)["service.cuda_home"]["value"]
    assert (got["rule"], got["path"], got["version"]) == ("/usr/local/cuda", "/usr/local/cuda", "12.9")


def test_service_cuda_home_from_the_manifest_without_a_unit_and_absent_without_both(box):
    cuda_toolkit(box, "/opt/cu13", "13.0")
    assert "absent" in service.service_facts(box.env())["service.cuda_home"]
    box.write("/etc/gptoss/manifest.json", json.dumps({"stack": "vllm-0.33.0", "env": {"CUDA_HOME": "/opt/cu13"}}))
    fact = service.service_facts(box.env())["service.cuda_home"]
    assert fact["value"]["version"] == "13.0" and fact["source"].startswith("/etc/gptoss/manifest.json env")


# -- the venv ---------------------------------------------------------------------------------------

TORCH_VERSION_PY = """# stand-in: the text of a real torch/version.py (2.11.0+cu130), not torch itself
from typing import Optional

__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip', 'xpu']
__version__ = '2.11.0+cu130'
debug = False
cuda: Optional[str] = '13.0'
git_version = '70d99e998b8955e7a4ab5ff3ba4bc2f4f4d0b2f0'
hip: Optional[str] = None
xpu: Optional[str] = None
"""

ENVS_PY = '''# stand-in: the shape of vllm/envs.py
import os
from typing import Any, Callable

if False:
    VLLM_HOST_IP: str = ""

environment_variables: dict[str, Callable[[], Any]] = {
    "VLLM_HOST_IP": lambda: os.getenv("VLLM_HOST_IP", ""),
    "VLLM_ATTENTION_BACKEND": lambda: os.getenv("VLLM_ATTENTION_BACKEND", None),
    "CUDA_VISIBLE_DEVICES": lambda: os.environ.get("CUDA_VISIBLE_DEVICES", None),
    "VLLM_USE_TRTLLM_ATTENTION": lambda: os.getenv("VLLM_USE_TRTLLM_ATTENTION", None),
}
'''

REGISTRY_PY = '''# stand-in: the shape of vllm/v1/attention/backends/registry.py
from enum import Enum

class AttentionBackendEnum(Enum):
    FLASH_ATTN = "vllm.v1.attention.backends.flash_attn.FlashAttentionBackend"
    TRITON_ATTN = (
        "vllm.v1.attention.backends.triton_attn.TritonAttentionBackend"
    )
    FLASHINFER = "x"
    CUSTOM = None

    def get_path(self):
        return self.value
'''


def make_dist(sp: Path, name: str, version: str, owns: list[str], installer: str = "pip") -> None:
    d = sp / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nlong description: Name: nope\n")
    (d / "INSTALLER").write_text(installer + "\n")
    record = [f"{p},sha256=x,1" for p in owns] + [f"{d.name}/METADATA,,", f"../../../bin/{name},,"]
    (d / "RECORD").write_text("\n".join(record) + "\n")
    for p in owns:
        f = sp / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("")


def make_venv(root: Path, python: str = "3.12.3") -> Path:
    sp = root / "lib" / f"python{python.rsplit('.', 1)[0]}" / "site-packages"
    sp.mkdir(parents=True)
    (root / "pyvenv.cfg").write_text(f"home = /usr/bin\nimplementation = CPython\nversion_info = {python}\n")
    (root / "bin").mkdir()
    return sp


def test_venv_distributions_torch_and_vllm(tmp_path, box):
    v = tmp_path / "venv"
    sp = make_venv(v)
    make_dist(sp, "torch", "2.11.0", ["torch/__init__.py", "torch/version.py", "functorch/__init__.py"], installer="uv")
    (sp / "torch/version.py").write_text(TORCH_VERSION_PY)
    make_dist(sp, "triton", "3.6.0", ["triton/__init__.py"])
    make_dist(sp, "pytorch_triton", "3.6.0+git", ["triton/__init__.py", "triton/language/core.py"])
    make_dist(sp, "typing_extensions", "4.15.0", ["typing_extensions.py", "__pycache__/typing_extensions.cpython-312.pyc"])
    make_dist(sp, "vllm", "0.26.0", ["vllm/__init__.py", "vllm/envs.py"])
    (sp / "vllm/envs.py").write_text(ENVS_PY)
    (sp / "vllm/_version.py").write_text("__version__ = version = '0.26.0'\n__version_tuple__ = version_tuple = (0, 26, 0)\n")
    box.write("/x", "")
    reg = sp / "vllm/v1/attention/backends/registry.py"
    reg.parent.mkdir(parents=True)
    reg.write_text(REGISTRY_PY)
    (sp / "~riton").mkdir()

    facts = venv.venv_facts(box.env(), str(v))
    assert facts["venv"]["value"]["rule"] == "--venv"
    assert facts["venv"]["value"]["python"] == "3.12.3"
    dists = {d["name"]: d for d in facts["venv.distributions"]["value"]}
    assert dists["torch"]["version"] == "2.11.0"  # the dist-info says no +cu130 ...
    assert facts["torch.build"]["value"]["version"] == "2.11.0+cu130"  # ... version.py does
    assert facts["torch.build"]["value"]["cuda"] == "13.0"
    assert dists["torch"]["installer"] == "uv"
    assert dists["torch"]["top_level"] == ["functorch", "torch"]
    assert dists["pytorch-triton"]["top_level"] == ["triton"] == dists["triton"]["top_level"]
    assert dists["typing-extensions"]["top_level"] == ["typing_extensions"]
    assert facts["venv.leftovers"]["value"] == [{"name": "~riton", "path": str(sp / "~riton"), "kind": "dir"}]
    assert facts["vllm.install"]["value"]["version"] == "0.26.0"
    assert facts["vllm.install"]["value"]["version_py"] == "0.26.0"
    assert facts["vllm.env_vars"]["value"] == ["VLLM_ATTENTION_BACKEND", "VLLM_HOST_IP", "VLLM_USE_TRTLLM_ATTENTION"]
    assert facts["vllm.attention_backends"]["value"] == ["FLASH_ATTN", "TRITON_ATTN", "FLASHINFER", "CUSTOM"]


def test_old_vllm_backend_enum_in_platforms(tmp_path, box):
    v = tmp_path / "venv"
    sp = make_venv(v)
    make_dist(sp, "vllm", "0.10.1+gptoss", ["vllm/__init__.py"])
    (sp / "vllm/envs.py").write_text(ENVS_PY)
    p = sp / "vllm/platforms/interface.py"
    p.parent.mkdir(parents=True)
    p.write_text("import enum\nclass _Backend(enum.Enum):\n    FLASH_ATTN = enum.auto()\n    TRITON_ATTN_VLLM_V1 = enum.auto()\n")
    facts = venv.venv_facts(box.env(), str(v))
    assert facts["vllm.install"]["value"]["version"] == "0.10.1+gptoss"
    assert facts["vllm.attention_backends"]["value"] == ["FLASH_ATTN", "TRITON_ATTN_VLLM_V1"]


def test_no_torch_no_vllm_are_absent(tmp_path, box):
    v = tmp_path / "venv"
    make_venv(v)
    facts = venv.venv_facts(box.env(), str(v))
    assert "absent" in facts["torch.build"] and "absent" in facts["vllm.install"]


def test_venv_rule_order(tmp_path, box):
    explicit, active, served = (tmp_path / n for n in ("explicit", "active", "served"))
    make_venv(explicit)
    for v in (active, served):
        make_venv(box.root / str(v).lstrip("/"))
    box.write("/etc/systemd/system/gptoss-vllm.service", f"[Service]\nExecStart={served}/bin/vllm serve m\n")
    env = box.env(VIRTUAL_ENV=str(active))
    assert venv.find_venv(env, str(explicit))[:2] == (str(explicit), "--venv")
    assert venv.find_venv(env, None)[:2] == (str(active), "VIRTUAL_ENV")
    assert venv.find_venv(box.env(), None)[:2] == (str(served), "service")


def test_venv_from_manifest(box):
    make_venv(box.root / "opt/gptoss/stacks/s1")
    box.write("/etc/gptoss/manifest.json", json.dumps({"venv": "/opt/gptoss/stacks/s1"}))
    assert venv.find_venv(box.env(), None)[:2] == ("/opt/gptoss/stacks/s1", "manifest")


def test_no_venv_anywhere_is_absent(box):
    facts = venv.venv_facts(box.env(), None)
    assert "pass --venv" in facts["venv"]["absent"]


def test_explicit_non_venv_is_a_usage_error(tmp_path, box):
    with pytest.raises(VenvError, match="not a venv"):
        venv.venv_facts(box.env(), str(tmp_path))


# -- the service ------------------------------------------------------------------------------------

UNIT = """[Unit]
Description=vLLM serving gpt-oss

[Service]
User=gptoss
Environment="VLLM_ATTENTION_BACKEND=TRITON_ATTN_VLLM_V1" HF_HUB_OFFLINE=1
EnvironmentFile=/etc/gptoss/gptoss.env
EnvironmentFile=-/etc/gptoss/missing-is-fine.env
ExecStart=/opt/gptoss/current/bin/vllm serve openai/gpt-oss-120b \\
    --tensor-parallel-size 2 --host 0.0.0.0 --api-key ${VLLM_API_KEY} $EXTRA_ARGS

[Install]
WantedBy=multi-user.target
"""


def test_service_unit_environment_and_serve_flags(box):
    box.write("/etc/systemd/system/gptoss-vllm.service", UNIT)
    box.write("/etc/systemd/system/gptoss-vllm.service.d/10-port.conf", "[Service]\nEnvironment=EXTRA=1\n")
    box.write("/etc/gptoss/gptoss.env", 'VLLM_API_KEY="sk-abcdefghijklmnop"\nexport EXTRA_ARGS="--port 8010 --async-scheduling"\nHF_HUB_OFFLINE=0\n', 0o640)
    make_venv(box.root / "opt/gptoss/current")
    facts = service.service_facts(box.env())
    svc = facts["service"]["value"]
    assert svc["user"] == "gptoss"
    assert svc["environment_files"] == ["/etc/gptoss/gptoss.env", "/etc/gptoss/missing-is-fine.env"]
    assert svc["environment"]["HF_HUB_OFFLINE"] == "0"  # EnvironmentFile= overrides Environment=
    assert svc["environment"]["EXTRA"] == "1"  # drop-ins are read
    assert svc["environment_file_errors"] == {}
    assert svc["venv"] == "/opt/gptoss/current"
    serve = facts["service.serve"]["value"]
    assert (serve["model"], serve["tensor_parallel_size"], serve["host"], serve["port"]) == ("openai/gpt-oss-120b", 2, "0.0.0.0", 8010)
    assert serve["api_key_set"] is True
    assert serve["flags"]["async-scheduling"] == "True"


def test_exec_start_quoting_as_the_deploy_writes_it():
    env = {"V": "x y", "K": "k1"}
    words = ["vllm", "--chat-template", "$${HOME}/t 100%%", "${K}", "$V", "--api-key=${K}"]
    assert service.expand_exec(words, env) == ["vllm", "--chat-template", "${HOME}/t 100%", "k1", "x", "y", "--api-key=k1"]


def test_unreadable_environment_file_is_noted(box):
    box.write("/etc/systemd/system/gptoss-vllm.service", "[Service]\nEnvironmentFile=/etc/gptoss/nope.env\nExecStart=/usr/bin/vllm serve m\n")
    svc = service.service_facts(box.env())["service"]["value"]
    assert "/etc/gptoss/nope.env" in svc["environment_file_errors"]


def test_service_with_bad_port_is_a_failed_serve_fact(box):
    box.write("/etc/systemd/system/gptoss-vllm.service", "[Service]\nExecStart=/usr/bin/vllm serve m --port eighty\n")
    facts = service.service_facts(box.env())
    assert "--port 'eighty'" in facts["service.serve"]["failed"]


def test_shell_env_keeps_relevant_names_only(box):
    env = box.env(VLLM_USE_V1="1", HOME="/root", NCCL_DEBUG="INFO", HF_TOKEN="hf_abcdefghijklmnop", TIKTOKEN_ENCODINGS_BASE="/t")
    got = service.shell_env(env)["env.shell"]["value"]
    assert set(got) == {"VLLM_USE_V1", "NCCL_DEBUG", "HF_TOKEN", "TIKTOKEN_ENCODINGS_BASE"}


def test_bad_manifest_is_failed(box):
    box.write("/etc/gptoss/manifest.json", "{not json")
    assert "not JSON" in service.manifest_fact(box.env())["manifest"]["failed"]


# -- files ------------------------------------------------------------------------------------------


def test_world_readable_secrets(box):
    box.write("/etc/gptoss/api-key", "sk-abcdefghijklmnop\n", 0o644)
    box.write("/etc/gptoss/gptoss.env", "HF_TOKEN=hf_abcdefghijklmnop\n", 0o644)
    box.write("/etc/gptoss/manifest.json", '{"stack": "s"}', 0o644)  # readable, but no secret in it
    box.write("/root/.cache/huggingface/token", "hf_abcdefghijklmnop", 0o600)  # private: fine
    got = world_readable_secrets(box.env())["files.world_readable_secrets"]["value"]
    assert [(g["path"], g["mode"]) for g in got] == [("/etc/gptoss/api-key", "0644"), ("/etc/gptoss/gptoss.env", "0644")]
    assert "HF_TOKEN" in got[1]["what"]


def test_secret_behind_a_closed_directory_is_not_readable(box):
    box.write("/etc/gptoss/api-key", "sk-abcdefghijklmnop\n", 0o644)
    os.chmod(box.root / "etc/gptoss", 0o750)
    assert world_readable_secrets(box.env())["files.world_readable_secrets"]["value"] == []


def test_offline_files_from_the_service_environment(box):
    box.write("/etc/systemd/system/gptoss-vllm.service", "[Service]\nEnvironment=TIKTOKEN_ENCODINGS_BASE=/opt/tiktoken HF_HOME=/srv/hf\nExecStart=/usr/bin/vllm serve m\n")
    box.write("/opt/tiktoken/o200k_base.tiktoken", "x")
    (box.root / "srv/hf/hub/models--openai--gpt-oss-20b").mkdir(parents=True)
    box.write("/opt/tiktoken_cache/fb374d419588a4632f3f557e76b4b70aebbca790", "x")
    got = offline_files(box.env(TIKTOKEN_CACHE_DIR="/opt/tiktoken_cache"))["hf.offline_files"]["value"]
    assert got["tiktoken_cache_files"] == ["fb374d419588a4632f3f557e76b4b70aebbca790"]
    assert (got["tiktoken_dir"], got["tiktoken_from"], got["files"]) == ("/opt/tiktoken", "service", ["o200k_base.tiktoken"])
    assert got["hub_models"] == ["openai/gpt-oss-20b"]


# -- the whole snapshot -----------------------------------------------------------------------------


def test_collect_whole_box_is_redacted_and_complete(box, monkeypatch):
    box.write("/proc/driver/nvidia/version", PROC_VERSION)
    box.tool("nvidia-smi", nvidia_smi_standin())
    box.write("/etc/systemd/system/gptoss-vllm.service", "[Service]\nExecStart=/usr/bin/vllm serve m --api-key sk-abcdefghijklmnop --hf-token hf_abcdefghijklmnop\n")
    snap = collect(box.env(HF_TOKEN="hf_abcdefghijklmnop", VLLM_API_KEY="plain-secret"))
    text = snap.to_json()
    assert "abcdefghijklmnop" not in text and "plain-secret" not in text
    assert snap.get("env.shell")["HF_TOKEN"] == "***"
    assert snap.get("service.serve")["api_key_set"] is True
    from gptoss_doctor.snapshot import FACT_KEYS

    assert set(snap.facts) == set(FACT_KEYS) - {"deep"}  # every key, one of value/absent/failed
    for key, fact in snap.facts.items():
        assert len({"value", "absent", "failed"} & set(fact)) == 1, key


def test_a_crashing_collector_becomes_a_failed_fact(box, monkeypatch):
    def broken(env):
        raise PermissionError("denied by the test")

    monkeypatch.setattr("gptoss_doctor.collect.COLLECTORS", [(broken, ("host.os", "host.hostname"))])
    snap = collect(box.env())
    assert snap.fact("host.os") == {"failed": "PermissionError: denied by the test"}
    assert "failed" in snap.fact("host.hostname")


# -- what the deploy writes, as the doctor reads it ---------------------------------------------------


def test_collect_reads_the_files_the_deploy_writes(box, tmp_path):
    """The deploy's own unit, EnvironmentFile, key file and manifest (rendered by deploys/), under a fake root."""
    sys_path = str(Path(__file__).resolve().parents[1] / "deploys")
    import sys

    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    from gptoss_deploy import config as C, manifest, service as unit_mod
    from gptoss_doctor import knowledge

    key = tmp_path / "api-key"
    key.write_text("sk-test-0123456789abc\n")
    key.chmod(0o600)
    kb = knowledge.load()
    debian = {"os_id": "debian", "os_like": None, "os_pretty": "Debian GNU/Linux 12", "arch": "x86_64",
              "python_path": "/usr/bin/python3", "python_version": "3.11.2", "gpus": [], "nvswitch_count": 0}
    stack = [s for s in kb.stacks.values() if kb.recipe("H100", s.vllm)][-1].name
    cfg = C.validate("gpu-01", {"gptoss_stack": stack, "gptoss_gpu_family": "H100", "gptoss_api_key_file": str(key)}, debian, kb)

    box.write(f"/etc/systemd/system/{C.UNIT}", unit_mod.unit_text(cfg))
    box.write(C.ENV_FILE, unit_mod.env_file_text(cfg), 0o640)
    box.write(C.KEY_FILE, unit_mod.key_file_text(cfg), 0o640)
    box.write("/etc/gptoss/manifest.json", manifest.manifest_text(cfg))
    make_venv(box.root / cfg.venv.lstrip("/"))
    current = box.root / C.CURRENT.lstrip("/")  # the deploy points `current` at the active stack's venv
    if not current.exists():
        current.symlink_to(box.root / cfg.venv.lstrip("/"))

    snap = collect(box.env())
    serve = snap.get("service.serve")
    assert serve["api_key_set"] is True  # from the key file, never from argv
    assert serve["model"] and serve["model"] in " ".join(cfg.serve_argv())
    assert serve["tensor_parallel_size"] == cfg.tensor_parallel_size
    assert (serve["host"], serve["port"]) == (cfg.bind_address, cfg.port)
    assert snap.get("service")["user"] == "gptoss"
    assert (snap.get("venv")["rule"], snap.get("venv")["path"]) == ("service", C.CURRENT)
    assert snap.get("manifest")["stack"] == cfg.stack
    assert snap.get("files.world_readable_secrets") == []  # 0640 is right
    assert "sk-test-0123456789abc" not in snap.to_json()


# -- live state -----------------------------------------------------------------------------------


def test_a_real_listening_socket_is_found_with_its_process():
    """On this machine's real /proc: a socket this test listens on is found in /proc/net/tcp and
    traced to this process through /proc/self/fd; this process is not the service."""
    import socket

    from gptoss_doctor.collect import live

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = Env()
        rows = live.listening_inodes(env.read_text("/proc/net/tcp"), port)
        assert len(rows) == 1
        owners, _ = live.socket_owners(env, {rows[0][1]})
        assert owners == {rows[0][1]: os.getpid()}
        who = live.describe(env, os.getpid(), live.ServiceProcesses(env))
        assert who["is_service"] is False and "pytest" in who["command"]


UNIT_8000 = "[Service]\nUser=gptoss\nExecStart=/opt/v/bin/vllm serve openai/gpt-oss-20b --port 8000\n"


def _fake_process(box, pid: int, argv: list[str], ppid: int = 1, cgroup: str = "0::/user.slice\n", sockets=()):
    box.write(f"/proc/{pid}/cmdline", "\0".join(argv) + "\0")
    box.write(f"/proc/{pid}/stat", f"{pid} (x) S {ppid} 0 0\n")
    box.write(f"/proc/{pid}/cgroup", cgroup)
    box.write(f"/proc/{pid}/status", "Uid:\t0\t0\t0\t0\n")
    (box.root / f"proc/{pid}/fd").mkdir(parents=True, exist_ok=True)
    for n, inode in enumerate(sockets):
        os.symlink(f"socket:[{inode}]", box.root / f"proc/{pid}/fd/{n + 3}")


TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def test_the_port_holder_is_named_and_told_from_the_service(box):
    from gptoss_doctor.collect.live import service_port

    box.write("/etc/systemd/system/gptoss-vllm.service", UNIT_8000)
    # 0x1F40 = 8000: one LISTEN socket (st 0A) of a stray http.server, one ESTABLISHED (01) row ignored
    box.write("/proc/net/tcp", TCP_HEADER
              + "   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1\n"
              + "   1: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 556 1\n")
    _fake_process(box, 77, ["python3", "-m", "http.server", "8000"], sockets=[555])
    got = service_port(box.env())["service.port"]["value"]
    assert got["port"] == 8000 and [(x["pid"], x["is_service"]) for x in got["listeners"]] == [(77, False)]
    assert got["listeners"][0]["command"] == "python3 -m http.server 8000"

    # the service's worker, a child of a process in the unit's cgroup: the service's own
    _fake_process(box, 50, ["/opt/v/bin/python", "/opt/v/bin/vllm", "serve"], cgroup="0::/system.slice/gptoss-vllm.service\n")
    (box.root / "proc/77").rename(box.root / "proc/78")
    _fake_process(box, 79, ["/opt/v/bin/python", "-c", "worker"], ppid=50, sockets=[555])
    import shutil

    shutil.rmtree(box.root / "proc/78")
    got = service_port(box.env())["service.port"]["value"]
    assert [(x["pid"], x["is_service"]) for x in got["listeners"]] == [(79, True)]
    assert "pid 50" in got["listeners"][0]["why"]


def test_access_is_judged_as_the_service_user(box):
    from gptoss_doctor.collect.live import access_as

    model = box.root / "models/m"
    model.mkdir(parents=True)
    (box.root / "models").chmod(0o700)  # root-only, as a model copied in by root
    os.chown(box.root / "models", 0, 0) if os.geteuid() == 0 else None
    env = box.env()
    uid = os.stat(box.root / "models").st_uid
    other = uid + 4242
    assert access_as(env, "/models/m", uid, [], "r") is None
    assert "cannot enter /models (0700" in access_as(env, "/models/m", other, [], "r")
    (box.root / "models").chmod(0o750)
    gid = os.stat(box.root / "models").st_gid
    model.chmod(0o750)
    assert access_as(env, "/models/m", other, [gid], "r") is None  # through the group
    assert "no r/w/x" in access_as(env, "/models/m", other, [gid], "rw")
    assert "does not exist" in access_as(env, "/models/gone", other, [gid], "r")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user or group needs root")
def test_service_access_and_disk_from_the_unit(box):
    from gptoss_doctor.collect.live import service_access

    box.write("/etc/systemd/system/gptoss-vllm.service", UNIT_8000 + "Environment=HF_HOME=/var/lib/gptoss/hf\n")
    box.write("/etc/passwd", "root:x:0:0::/root:/bin/sh\ngptoss:x:4998:4998::/var/lib/gptoss:/usr/sbin/nologin\n")
    box.write("/etc/group", "gptoss:x:4998:\n")
    hub = box.root / "var/lib/gptoss/hf/hub"
    hub.mkdir(parents=True)
    facts = service_access(box.env())
    acc = facts["service.access"]["value"]
    assert acc["user"] == "gptoss" and acc["uid"] == 4998
    (row,) = acc["paths"]
    assert row["what"] == "HF hub cache" and "no r/w/x" in row["problem"]  # root's 0755 dir
    os.chown(hub, 4998, 4998)
    assert service_access(box.env())["service.access"]["value"]["paths"][0]["problem"] is None
    disk = facts["model.disk"]["value"]
    assert disk["complete"] is False and disk["free_bytes"] > 0 and disk["present_bytes"] == 0


def test_broken_python_link_and_dist_info_without_metadata(box, tmp_path):
    vdir = tmp_path / "v"
    sp = vdir / "lib/python3.12/site-packages"
    (sp / "pytorch_triton-3.4.0+git1.dist-info").mkdir(parents=True)
    (sp / "pytorch_triton-3.4.0+git1.dist-info/RECORD").write_text("triton/__init__.py,,\n")
    (vdir / "bin").mkdir()
    os.symlink("/nonexistent/python3.12", vdir / "bin/python")
    (vdir / "pyvenv.cfg").write_text("home = /nonexistent\nversion_info = 3.12.3\n")
    facts = venv.venv_facts(box.env(), explicit=str(vdir))
    v = facts["venv"]["value"]
    assert v["executable_ok"] is False and v["executable_link"] == "/nonexistent/python3.12" and v["deployed"] is False
    (d,) = facts["venv.distributions"]["value"]
    assert (d["name"], d["version"], d["metadata"], d["top_level"]) == ("pytorch-triton", "3.4.0+git1", False, ["triton"])


def test_uv_run_hides_virtual_env_the_vllm_on_path_is_found(box):
    """`uv run` sets VIRTUAL_ENV to the doctor's own venv; an activated venv's bin stays on PATH."""
    from gptoss_doctor.collect import venv as venv_mod

    box.write("/home/u/serve/pyvenv.cfg", "version_info = 3.12.3\n")
    box.tool("vllm", "exit 0", where="/home/u/serve/bin")
    env = box.env(PATH="/home/u/serve/bin:/usr/bin", VIRTUAL_ENV="/doctor/.venv")
    assert venv_mod._vllm_on_path(env) == "/home/u/serve"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user or group needs root")
def test_the_units_groups_count_for_access(box):
    """SupplementaryGroups= (the deploy gives AMD hosts video and render) lets the service's user
    in where its own groups would not."""
    from gptoss_doctor.collect.live import service_access

    box.write("/etc/systemd/system/gptoss-vllm.service",
              "[Service]\nUser=gptoss\nSupplementaryGroups=models\nExecStart=/opt/v/bin/vllm serve /srv/m --port 8000\n")
    box.write("/etc/passwd", "gptoss:x:4998:4998::/var/lib/gptoss:/usr/sbin/nologin\n")
    box.write("/etc/group", "gptoss:x:4998:\nmodels:x:4700:\n")
    model = box.root / "srv/m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    for p in (model.parent, model, model / "config.json"):
        os.chown(p, 0, 4700)
        p.chmod(0o750 if p.is_dir() else 0o640)
    acc = service_access(box.env())["service.access"]["value"]
    assert 4700 in acc["gids"] and acc["paths"][0]["problem"] is None
    box.write("/etc/systemd/system/gptoss-vllm.service", "[Service]\nUser=gptoss\nExecStart=/opt/v/bin/vllm serve /srv/m --port 8000\n")
    acc = service_access(box.env())["service.access"]["value"]
    assert "cannot enter /srv (0750" in acc["paths"][0]["problem"]
