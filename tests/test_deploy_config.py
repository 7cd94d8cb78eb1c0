"""The deploy's config: every bad value is one line (host, key, value, fix), raised before any
host is touched; the real pyinfra CLI shows that one line and changes nothing.

Facts are given as the dict `facts.parse_host_facts` builds from a host's output; the
knowledge is the real one shipped with the doctor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

from gptoss_deploy import config as C  # noqa: E402
from gptoss_deploy import facts as F  # noqa: E402

DEBIAN = {"os_id": "debian", "os_like": None, "os_pretty": "Debian GNU/Linux 12 (bookworm)", "arch": "x86_64",
          "python_path": "/usr/bin/python3", "python_version": "3.11.2", "gpus": [], "nvswitch_count": 0}


def newest_stack(kb, python="3.11.2"):
    from packaging.specifiers import SpecifierSet

    fits = [s for s in kb.stacks.values() if python in SpecifierSet(s.python) and kb.recipe("H100", s.vllm)]
    return fits[-1].name


@pytest.fixture()
def good(kb, key_file):
    return {"gptoss_stack": newest_stack(kb), "gptoss_gpu_family": "H100", "gptoss_api_key_file": key_file}


def nvidia_facts(n=8, name="NVIDIA H100 80GB HBM3", driver="580.95.05", nvswitch=4):
    lines = [f"nvgpu={i}, {name}, 9.0, 81559, {driver}" for i in range(n)]
    lines += [f"nvswitch_count={nvswitch}", "os_id=ubuntu", "os_like=debian", "arch=x86_64",
              "python_path=/usr/bin/python3", "python_version=3.12.3"]
    return F.parse_host_facts(lines)


def one_line_error(kb, data, facts=DEBIAN, host="gpu-07"):
    with pytest.raises(C.ConfigError) as e:
        C.validate(host, data, facts, kb)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"host {host}: ")
    assert "fix: " in msg
    return msg


# -- the good path -----------------------------------------------------------------------------


def test_good_config_uses_knowledge_and_keeps_key_out_of_argv(kb, good):
    cfg = C.validate("gpu-01", good, DEBIAN, kb)
    stack = kb.stacks[good["gptoss_stack"]]
    assert cfg.vllm == stack.vllm
    assert cfg.requirements[: len(stack.requirements)] == tuple(stack.requirements) or any(
        r.startswith("vllm[") for r in cfg.requirements
    )
    argv = cfg.serve_argv()
    assert argv[:3] == [f"{C.CURRENT}/bin/vllm", "serve", "openai/gpt-oss-20b"]
    assert argv[argv.index("--port") + 1] == "8000" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "sk-test-0123456789" not in " ".join(argv) and "--api-key" not in argv
    assert "sk-test-0123456789" not in repr(cfg.env)
    # CUDA_HOME: the stack's pip toolkit inside its venv (for the host's python minor) if it has one.
    if stack.nvcc_requirement:
        assert cfg.cuda_home == f"{cfg.venv}/lib/python3.11/site-packages/{stack.cuda_home_subdir}"
        assert cfg.env["CUDA_HOME"] == cfg.cuda_home
    recipe = kb.recipe("H100", stack.vllm)
    for k, v in recipe.env.items():
        assert cfg.env[k] == v
    for flag in recipe.serve_flags:
        assert flag in argv


def test_config_is_frozen(kb, good):
    cfg = C.validate("gpu-01", good, DEBIAN, kb)
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 9000


def test_mirrors_replace_every_index_url(kb, good):
    stack = kb.stacks[good["gptoss_stack"]]
    mirrors = {ix.name: f"http://mirror.local/{ix.name}/simple" for ix in stack.indexes}
    cfg = C.validate("gpu-01", {**good, "gptoss_index_mirrors": mirrors}, DEBIAN, kb)
    assert {ix.url for ix in cfg.indexes} == set(mirrors.values())
    assert cfg.pypi_url == mirrors["pypi"]


def test_gpu_family_detected_from_nvidia_smi(kb, good):
    data = {k: v for k, v in good.items() if k != "gptoss_gpu_family"}
    cfg = C.validate("gpu-01", {**data, "gptoss_tensor_parallel_size": 8}, nvidia_facts(), kb)
    assert cfg.family == "H100" and cfg.gpu_count == 8 and cfg.nvswitch_count == 4
    assert cfg.driver_version == "580.95.05"


def test_gfx_target_version_names_the_amd_target():
    assert [F.gfx_name(v) for v in ("90402", "90500", "120001", "90010")] == ["gfx942", "gfx950", "gfx1201", "gfx90a"]


# -- each bad key: one line naming host, key, value and fix ------------------------------------


@pytest.mark.parametrize(
    "override, key, shown",
    [
        ({"gptoss_stack": "vllm-9.9.9"}, "gptoss_stack", "'vllm-9.9.9'"),
        ({"gptoss_stack": None}, "gptoss_stack", "<unset>"),
        ({"gptoss_model": "30b"}, "gptoss_model", "'30b'"),
        ({"gptoss_tensor_parallel_size": 3}, "gptoss_tensor_parallel_size", "3"),
        ({"gptoss_tensor_parallel_size": "two"}, "gptoss_tensor_parallel_size", "'two'"),
        ({"gptoss_gpu_memory_utilization": 1.5}, "gptoss_gpu_memory_utilization", "1.5"),
        ({"gptoss_gpu_memory_utilization": 0}, "gptoss_gpu_memory_utilization", "0"),
        ({"gptoss_port": 70000}, "gptoss_port", "70000"),
        ({"gptoss_port": "http"}, "gptoss_port", "'http'"),
        ({"gptoss_bind_address": "localhost"}, "gptoss_bind_address", "'localhost'"),
        ({"gptoss_api_key_file": None}, "gptoss_api_key_file", "<unset>"),
        ({"gptoss_api_key_file": "/nonexistent/key"}, "gptoss_api_key_file", "'/nonexistent/key'"),
        ({"gptoss_index_mirrors": ["https://m/simple"]}, "gptoss_index_mirrors", "https://m/simple"),
        ({"gptoss_index_mirrors": {"pypi": "ftp://m/simple"}}, "gptoss_index_mirrors", "ftp://m/simple"),
        ({"gptoss_gpu_family": "H1000"}, "gptoss_gpu_family", "'H1000'"),
        ({"gptoss_gpu_family": None}, "gptoss_gpu_family", "<unset>"),
        ({"gptoss_hf_home": "relative/hf"}, "gptoss_hf_home", "'relative/hf'"),
        ({"gptoss_tool_servers": ["not a server"]}, "gptoss_tool_servers", "not a server"),
        ({"gptoss_extra_serve_args": ["--api-key", "x"]}, "gptoss_extra_serve_args", "--api-key"),
        ({"gptoss_predownload": "maybe"}, "gptoss_predownload", "'maybe'"),
        ({"gptoss_predownload": True, "gptoss_model_path": "/srv/models/gpt-oss-20b"}, "gptoss_predownload", "True"),
        ({"gptoss_uv_source": "ftp://x/uv.tgz"}, "gptoss_uv_source", "ftp://x/uv.tgz"),
        ({"gptoss_cuda_home": "system"}, "gptoss_cuda_home", "'system'"),
        ({"gptoss_cuda_home": "rel/cuda"}, "gptoss_cuda_home", "'rel/cuda'"),
        ({"gptoss_tensor_paralel_size": 2}, "gptoss_tensor_paralel_size", "2"),
    ],
)
def test_bad_value_is_one_line_naming_key_value_fix(kb, good, override, key, shown):
    msg = one_line_error(kb, {**good, **override})
    assert f"{key}=" in msg and shown in msg


def test_world_readable_key_file_refused(kb, good, key_file):
    os.chmod(key_file, 0o644)
    msg = one_line_error(kb, good)
    assert "world-readable" in msg and f"chmod 600 {key_file}" in msg


def test_tp_larger_than_gpus_present(kb, good):
    data = {k: v for k, v in good.items() if k != "gptoss_gpu_family"}
    msg = one_line_error(kb, {**data, "gptoss_tensor_parallel_size": 4}, nvidia_facts(n=2, nvswitch=0))
    assert "2 GPU(s)" in msg and "at most 2" in msg


def test_family_set_but_gpus_disagree(kb, good):
    msg = one_line_error(kb, {**good, "gptoss_gpu_family": "B200"}, nvidia_facts())
    assert "H100" in msg and "gptoss_gpu_family='B200'" in msg


def test_old_driver_reported_with_fix_unless_install_opted_in(kb, good):
    data = {k: v for k, v in good.items() if k != "gptoss_gpu_family"}
    old = nvidia_facts(driver="535.104.05")
    msg = one_line_error(kb, data, old)
    assert "535.104.05" in msg and "gptoss_install_driver=True" in msg
    cfg = C.validate("gpu-07", {**data, "gptoss_install_driver": True}, old, kb)
    assert cfg.install_driver


def test_unsupported_os_refused(kb, good):
    msg = one_line_error(kb, good, {**DEBIAN, "os_id": "rocky", "os_like": "rhel centos fedora", "os_pretty": "Rocky 9"})
    assert "unsupported" in msg and "'rocky'" in msg


def test_python_outside_stack_range(kb, good):
    """The stack venv then gets uv's managed CPython (managed_python.py); an air-gapped host with
    no mirror to download it from is refused."""
    from packaging.specifiers import SpecifierSet

    stack = kb.stacks[good["gptoss_stack"]]
    too_new = next(v for v in ("3.14.0", "3.13.1", "3.15.0") if v not in SpecifierSet(stack.python))
    cfg = C.validate("gpu-07", good, {**DEBIAN, "python_version": too_new}, kb)
    assert f"{cfg.managed_python.minor}.0" in SpecifierSet(stack.python) and cfg.python == DEBIAN["python_path"]
    msg = one_line_error(kb, {**good, "gptoss_wheelhouse": "/srv/wheels"}, {**DEBIAN, "python_version": too_new})
    assert too_new in msg and stack.python in msg and "gptoss_python_mirror" in msg


def test_extra_stack_file_missing(kb, good):
    with pytest.raises(C.ConfigError) as e:
        C.load_knowledge("gpu-07", ["/nonexistent/stacks.toml"])
    assert "gptoss_extra_stack_files" in str(e.value) and "/nonexistent/stacks.toml" in str(e.value)


# -- through the real pyinfra CLI: one line, no traceback, nothing changed ----------------------


def run_pyinfra(inventory: Path, *extra: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", str(inventory), "deploys/gptoss.py", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )


def tree_state(*roots: str) -> dict:
    """Every path under the roots with its mode, size and mtime: what a deploy would change."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames, ""]:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_cli_bad_data_stops_before_touching_the_host(tmp_path, good, local_host):
    inv = tmp_path / "inv.py"
    inv.write_text(f"hosts = [('@local', {{**{good!r}, 'gptoss_tensor_parallel_size': 3}})]\n")
    watched = (C.ROOT, C.ETC, C.STATE_DIR, "/etc/systemd/system")
    before = tree_state(*watched)
    r = run_pyinfra(inv)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if "gptoss_tensor_parallel_size" in line]
    assert len(errors) == 1, out
    assert "host @local: gptoss_tensor_parallel_size=3" in errors[0] and "fix: " in errors[0]
    assert "Beginning operation run" not in out
    assert tree_state(*watched) == before


# -- what the config renders (pure) ------------------------------------------------------------


def test_unit_env_and_manifest_never_hold_the_key(kb, good):
    from gptoss_deploy import manifest, service

    cfg = C.validate("gpu-01", good, DEBIAN, kb)
    unit = service.unit_text(cfg)
    assert "User=gptoss" in unit and "NoNewPrivileges=yes" in unit and "ProtectSystem=strict" in unit
    assert "Restart=on-failure" in unit and f"EnvironmentFile={C.KEY_FILE}" in unit
    assert "sk-test-0123456789" not in unit + service.env_file_text(cfg) + manifest.manifest_text(cfg)
    assert service.key_file_text(cfg) == "VLLM_API_KEY=sk-test-0123456789\n"
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split() == cfg.serve_argv()
    m = json.loads(manifest.manifest_text(cfg))
    assert m["stack"] == cfg.stack and m["versions"]["vllm"] == cfg.vllm and m["unit"] == C.UNIT
    assert manifest.manifest_text(cfg) == manifest.manifest_text(C.validate("gpu-01", good, DEBIAN, kb))


def test_manifest_redacts_mirror_credentials(kb, good):
    from gptoss_deploy import manifest

    cfg = C.validate("gpu-01", {**good, "gptoss_index_mirrors": {"pypi": "https://bob:s3cret@mirror.local/simple"}}, DEBIAN, kb)
    text = manifest.manifest_text(cfg)
    assert "s3cret" not in text and "https://***@mirror.local/simple" in text


def test_uv_options_follow_the_stack(kb, key_file):
    from gptoss_deploy import python_env

    launch = next(s for s in kb.stacks.values() if s.index_strategy and s.prerelease)
    facts = {**DEBIAN, "python_version": "3.12.3"}
    data = {"gptoss_stack": launch.name, "gptoss_gpu_family": "H100", "gptoss_api_key_file": key_file}
    cfg = C.validate("gpu-01", data, facts, kb)
    args = python_env.uv_install_args(cfg)
    assert args[args.index("--index-strategy") + 1] == launch.index_strategy
    assert args[args.index("--prerelease") + 1] == launch.prerelease
    assert args[args.index("--default-index") + 1] == launch.index("pypi").url
    assert [args[i + 1] for i, a in enumerate(args) if a == "--index"] == [i.url for i in launch.indexes if i.name != "pypi"]
    # A mirror moves the source, not the result: the venv is not rebuilt for it.
    mirrored = C.validate("gpu-01", {**data, "gptoss_index_mirrors": {"pypi": "http://m.local/simple"}}, facts, kb)
    assert python_env.spec_hash(mirrored) == python_env.spec_hash(cfg)
    assert "http://m.local/simple" in python_env.uv_install_args(mirrored)


def test_torch_backend_goes_through_a_mirrored_pytorch_index(kb, good):
    from gptoss_deploy import python_env

    stack = next(s for s in reversed(list(kb.stacks.values())) if s.torch_backend and s.torch_backend != "auto")
    mirror = f"http://m.local/pytorch-{stack.torch_backend}/simple"
    facts = {**DEBIAN, "python_version": "3.12.3"}
    data = {**good, "gptoss_stack": stack.name, "gptoss_index_mirrors": {f"pytorch-{stack.torch_backend}": mirror}}
    cfg = C.validate("gpu-01", data, facts, kb)
    args = python_env.uv_install_args(cfg)
    assert "--torch-backend" not in args and mirror in args
    assert args[args.index("--index-strategy") + 1] == "unsafe-best-match"
    plain = python_env.uv_install_args(C.validate("gpu-01", {**good, "gptoss_stack": stack.name}, facts, kb))
    assert plain[plain.index("--torch-backend") + 1] == stack.torch_backend


def test_doctor_gate_verdict():
    from gptoss_doctor import __name__ as _  # noqa: F401  (the doctor is importable here)
    from gptoss_deploy.doctor import gate_verdict

    assert gate_verdict(0, "{}", "") is None
    report = {"findings": [{"id": "torch-cuda-suffix", "severity": "error", "title": "torch is 2.7.1+cu126",
                            "fix": {"text": "reinstall torch"}},
                           {"id": "x", "severity": "warning", "title": "w"}]}
    v = gate_verdict(1, json.dumps(report), "")
    assert "torch-cuda-suffix" in v and "reinstall torch" in v and "x (w)" not in v
    assert gate_verdict(2, "", "gptoss-doctor: bad flag --x") == "gptoss-doctor exited 2: gptoss-doctor: bad flag --x"


def test_parse_host_facts_from_real_shapes():
    f = F.parse_host_facts([
        "os_id=ubuntu", "os_like=debian", "arch=x86_64", "python_version=3.12.3",
        "nvgpu=0, NVIDIA H200, 9.0, 143771, 580.159.04",
        "nvproc=NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Release Build",
        "nvswitch_count=0", "system_cuda=13.0",
    ])
    assert f["gpus"] == [{"vendor": "nvidia", "index": 0, "name": "NVIDIA H200", "compute_cap": "9.0", "memory_mib": 143771}]
    assert f["driver_version"] == "580.159.04" and f["system_cuda_version"] == "13.0"
    amd = F.parse_host_facts(["amdgpu=90402", "amdgpu=90402", "amdgpu=0"])
    assert [g["gfx"] for g in amd["gpus"]] == ["gfx942", "gfx942"]


def test_cuda_home_auto_prefers_pip_then_a_new_enough_system_toolkit(kb, good):
    with_pip = next((s for s in kb.stacks.values() if s.nvcc_requirement), None)
    without = next((s for s in kb.stacks.values() if not s.nvcc_requirement and kb.recipe("H100", s.vllm)
                    and "3.11.2" in __import__("packaging.specifiers").specifiers.SpecifierSet(s.python)), None)
    if with_pip and "3.11.2" in __import__("packaging.specifiers").specifiers.SpecifierSet(with_pip.python):
        cfg = C.validate("gpu-01", {**good, "gptoss_stack": with_pip.name}, DEBIAN, kb)
        assert cfg.cuda_home_source == "pip" and cfg.cuda_home.endswith(with_pip.cuda_home_subdir)
    if without is not None:
        cfg = C.validate("gpu-01", {**good, "gptoss_stack": without.name}, {**DEBIAN, "system_cuda_version": without.cuda}, kb)
        assert (cfg.cuda_home, cfg.cuda_home_source) == ("/usr/local/cuda", "system")
        cfg = C.validate("gpu-01", {**good, "gptoss_stack": without.name}, {**DEBIAN, "system_cuda_version": "11.8"}, kb)
        assert cfg.cuda_home is None and "CUDA_HOME" not in cfg.env
        msg = one_line_error(kb, {**good, "gptoss_stack": without.name, "gptoss_cuda_home": "pip"})
        assert "no pip CUDA toolkit" in msg and f"cuda-nvcc-{without.cuda.replace('.', '-')}" in msg


def test_bare_host_without_python3_is_judged_by_the_distro_candidate(kb, good):
    f = F.parse_host_facts(["os_id=debian", "arch=x86_64", "python_candidate=3.11.2-1+b1", "missing_pkg=python3"])
    assert (f["python_version"], f["python_path"], f["missing_packages"]) == ("3.11.2", "/usr/bin/python3", ["python3"])
    cfg = C.validate("gpu-01", good, {**f, "gpus": []}, kb)
    assert cfg.python == "/usr/bin/python3" and cfg.missing_packages == ("python3",)


# -- the example inventories and the Vagrantfile -----------------------------------------------


def _groups(path: Path) -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem + "_inventory", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {k: v for k, v in vars(mod).items() if not k.startswith("_") and isinstance(v, (list, tuple))}


UBUNTU_2404 = {"os_id": "ubuntu", "os_like": "debian", "arch": "x86_64", "python_path": "/usr/bin/python3",
               "python_version": "3.12.3", "gpus": [], "nvswitch_count": 0}


def _gpu_facts(group: str) -> dict:
    """What each example group's hosts would report (nvidia-smi lines / KFD gfx targets)."""
    if group == "mi300x":
        return {**F.parse_host_facts(["amdgpu=90402" for _ in range(8)]), **{k: v for k, v in UBUNTU_2404.items() if k != "gpus"}}
    name, n, sw = {"h100": ("NVIDIA H100 80GB HBM3", 8, 4), "h200": ("NVIDIA H200", 8, 4), "b200": ("NVIDIA B200", 8, 2)}[group]
    cc = "10.0" if group == "b200" else "9.0"
    lines = [f"nvgpu={i}, {name}, {cc}, 143771, 580.95.05" for i in range(n)] + [f"nvswitch_count={sw}"]
    return {**UBUNTU_2404, **{k: v for k, v in F.parse_host_facts(lines).items() if k in ("gpus", "driver_version", "nvswitch_count")}}


def test_cluster_example_validates_for_every_group(kb, key_file):
    groups = _groups(REPO / "inventories" / "cluster.py")
    families = set()
    for group, (hosts, data) in groups.items():
        for h in hosts:
            name, hdata = h if isinstance(h, tuple) else (h, {})
            cfg = C.validate(name, {**data, **hdata, "gptoss_api_key_file": key_file}, _gpu_facts(group), kb)
            families.add(cfg.family)
            assert cfg.stack in kb.stacks
    assert len(families) == len(groups), "one group per GPU family"


def test_the_cluster_example_documents_every_key_as_the_key_table_does():
    from gptoss_deploy import keys

    text = (REPO / "inventories" / "cluster.py").read_text()
    start = text.index("\n\n", text.index("Data keys")) + 2
    block = text[start:text.index("\n\nConnection keys", start)]
    assert block == keys.doc_block(), "inventories/cluster.py: paste `cd deploys && python -m gptoss_deploy.keys`"
    assert len(keys.TABLE) == len(keys.KEYS)  # each key once


def test_vagrant_inventory_imports_and_its_data_validates(kb, key_file):
    groups = _groups(REPO / "inventories" / "vagrant.py")
    hosts, data = groups["vagrant_vms"]
    assert hosts == ["@vagrant/gptoss-1", "@vagrant/gptoss-2", "@vagrant/gptoss-3"]
    cfg = C.validate(hosts[0], {**data, "gptoss_api_key_file": key_file}, UBUNTU_2404, kb)
    assert cfg.bind_address == "0.0.0.0"
    vagrantfile = (REPO / "Vagrantfile").read_text()
    for h in hosts:
        assert f'"{h.split("/")[1]}"' in vagrantfile


def test_vagrantfile_syntax():
    import shutil

    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby not installed (Debian package ruby)")
    r = subprocess.run([ruby, "-c", str(REPO / "Vagrantfile")], capture_output=True, text=True)
    assert r.returncode == 0 and "Syntax OK" in r.stdout, r.stderr


@pytest.mark.parametrize("snapshot, family", [("h100-real.json", "H100"), ("h200-real.json", "H200")])
def test_family_detected_from_gpus_recorded_on_real_boxes(kb, good, snapshot, family):
    """The GPU names and driver of snapshots recorded on real machines, fed through the same
    `nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version` line shape."""
    facts = json.loads((REPO / "tests" / "fixtures" / "snapshots" / snapshot).read_text())["facts"]
    driver = facts["nvidia.driver"]["value"]["version"]
    lines = [f"nvgpu={g['index']}, {g['name']}, {g['compute_cap']}, {g['memory_mib']}, {driver}"
             for g in facts["nvidia.gpus"]["value"]]
    parsed = F.parse_host_facts(lines + ["os_id=ubuntu", "os_like=debian", "arch=x86_64", "python_version=3.12.3",
                                         "python_path=/usr/bin/python3"])
    data = {k: v for k, v in good.items() if k != "gptoss_gpu_family"}
    cfg = C.validate("gpu-01", data, parsed, kb)
    assert cfg.family == family and cfg.driver_version == driver and cfg.gpu_count == len(lines)


def test_fabric_manager_package_follows_the_driver_branch():
    from gptoss_deploy.gpu import fabric_manager_package

    assert fabric_manager_package("580.95.05") == "nvidia-fabricmanager-580"
    assert fabric_manager_package("570.148.08") == "nvidia-fabricmanager-570"
    assert fabric_manager_package("590.48.01") == "nvidia-fabricmanager"


def test_pinned_doctor_wheel_must_be_a_wheel(monkeypatch, tmp_path):
    from gptoss_deploy import doctor

    monkeypatch.setattr(doctor, "_built", {})
    monkeypatch.setenv("GPTOSS_DOCTOR_WHEEL", str(tmp_path / "nope.whl"))
    with pytest.raises(C.ConfigError) as e:
        doctor.build_wheel()
    assert "GPTOSS_DOCTOR_WHEEL=" in str(e.value) and "fix: " in str(e.value)
    whl = tmp_path / "gptoss_doctor-0.1.0-py3-none-any.whl"
    whl.write_bytes(b"PK")
    monkeypatch.setattr(doctor, "_built", {})
    monkeypatch.setenv("GPTOSS_DOCTOR_WHEEL", str(whl))
    assert doctor.build_wheel() == str(whl)


def test_upgrade_keys_in_the_same_inventory_are_accepted(kb, good):
    from gptoss_deploy import keys

    data = {**good, **{k.name: None for k in keys.TABLE if k.reader == "upgrade"}}
    assert C.validate("gpu-01", data, DEBIAN, kb).stack == good["gptoss_stack"]
    msg = one_line_error(kb, {**good, "gptoss_upgrade_bach": "1"})
    assert "gptoss_upgrade_bach" in msg and "unknown key" in msg


@pytest.mark.parametrize("typo, meant", [("gptoss_tensor_paralel_size", "gptoss_tensor_parallel_size"),
                                         ("gptoss_hf_hom", "gptoss_hf_home"), ("gptoss_stacks", "gptoss_stack"),
                                         ("gptoss_upgrade_bach", "gptoss_upgrade_batch"),
                                         ("gptoss_wheelhouse_nodeps", "gptoss_wheelhouse_no_deps")])
def test_a_mistyped_key_gets_the_nearest_real_one(kb, good, typo, meant):
    msg = one_line_error(kb, {**good, typo: "x"})
    assert msg == f"host gpu-07: {typo}='x': unknown key; fix: did you mean {meant}?"


def test_a_key_nothing_resembles_points_at_the_documented_list(kb, good):
    msg = one_line_error(kb, {**good, "gptoss_zzz": 1})
    assert msg.endswith("unknown key; fix: see the data keys in inventories/cluster.py")


def test_the_upgrade_refuses_a_mistyped_key_of_its_own(kb):
    from gptoss_deploy import rollout

    with pytest.raises(C.ConfigError, match=r"gptoss_keep_stack=3: unknown key; fix: did you mean gptoss_keep_stacks\?"):
        rollout.settings("gpu-07", {"gptoss_keep_stack": 3})


def test_every_key_in_the_table_parses_unset_to_its_default(kb, good):
    """The table's `default` is what an unset key means: validate() with only the required keys
    gives each key's default (the keys judged against facts or other keys aside)."""
    from gptoss_deploy import keys

    cfg = C.validate("gpu-01", good, DEBIAN, kb)
    by_field = {"gptoss_model": cfg.model_size, "gptoss_tensor_parallel_size": cfg.tensor_parallel_size,
                "gptoss_gpu_memory_utilization": cfg.gpu_memory_utilization, "gptoss_port": cfg.port,
                "gptoss_bind_address": cfg.bind_address, "gptoss_uv_source": cfg.uv_source,
                "gptoss_hf_home": cfg.hf_home, "gptoss_predownload": cfg.predownload, "gptoss_hf_endpoint": cfg.hf_endpoint,
                "gptoss_tiktoken_url": cfg.tiktoken_url, "gptoss_health_timeout_s": cfg.health_timeout_s,
                "gptoss_doctor_gate": cfg.doctor_gate, "gptoss_install_driver": cfg.install_driver}
    for name, got in by_field.items():
        assert got == keys.KEYS[name].default, name
    st = __import__("gptoss_deploy.rollout", fromlist=["settings"]).settings("gpu-01", {})
    assert (st.batch, st.keep_stacks, st.download_once) == tuple(
        keys.KEYS[k].default for k in ("gptoss_upgrade_batch", "gptoss_keep_stacks", "gptoss_download_once"))


def test_the_rollback_stack_needs_no_wheels_in_the_wheelhouse(kb, key_file):
    """The upgrade builds the config of the stack a host runs (its rollback) too; that stack is
    installed, so a wheelhouse without its wheels (here: no vllm at all) must not refuse it."""
    data = {"gptoss_stack": "vllm-0.26.0", "gptoss_gpu_family": "H100", "gptoss_api_key_file": key_file,
            "gptoss_wheelhouse": "/srv/wheelhouse"}
    facts = {**DEBIAN, "init": "none", "airgap": {"wheelhouse": ["torch-2.13.0+cu130-cp311-cp311-manylinux_2_28_x86_64.whl"]}}
    with pytest.raises(C.ConfigError, match="has no wheel for vllm==0.26.0"):
        C.validate("gpu-01", data, facts, kb)
    cfg = C.validate("gpu-01", data, facts, kb, installed=True)
    assert (cfg.stack, cfg.service_manager, cfg.airgap.wheelhouse) == ("vllm-0.26.0", "supervisor", "/srv/wheelhouse")
