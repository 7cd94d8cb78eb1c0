"""The target venv: which one, its Python, its distributions (from dist-info, not importlib),
torch's real build (torch/version.py as text) and what its vLLM knows (envs.py and the
attention-backend registry, parsed with `ast`). Nothing here imports torch or vLLM.
"""

from __future__ import annotations

import ast
import os
import re
import stat
import sys
from pathlib import Path

from ..snapshot import absent, canonical_name, failed, value
from .elf import needed_libraries
from .env import Env
from .service import read_manifest, read_unit

VLLM_ENVS = "vllm/envs.py"
# Where vLLM kept its attention-backend enum, newest first, and the enum's class names.
BACKEND_REGISTRIES = (
    "vllm/v1/attention/backends/registry.py",
    "vllm/attention/backends/registry.py",
    "vllm/platforms/interface.py",
)
BACKEND_CLASSES = ("AttentionBackendEnum", "_Backend")
# vLLM's main compiled library, newest name last; it links the libcudart of its CUDA major.
VLLM_COMPILED = ("vllm/_C.abi3.so", "vllm/_C_stable_libtorch.abi3.so")


class VenvError(Exception):
    """The venv named by --venv or VIRTUAL_ENV is not a venv: the message says why and how to fix it."""


# -- which venv ------------------------------------------------------------------------------


def _is_own_venv(path: str) -> bool:
    try:
        return os.path.samefile(path, sys.prefix)
    except OSError:
        return False


def _parent_virtual_env(env: Env) -> str | None:
    """VIRTUAL_ENV of the process that started this one (`uv run` replaces it with the project's
    venv for its child, but keeps the shell's in its own environment)."""
    if env.root != Path("/"):
        return None
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"VIRTUAL_ENV="):
                    return item.split(b"=", 1)[1].decode(errors="replace") or None
    except OSError:
        return None
    return None


def _vllm_on_path(env: Env) -> str | None:
    """The venv of the first `vllm` on PATH: an activated venv `uv run` hid (it keeps PATH's tail)."""
    for d in env.environ.get("PATH", "").split(os.pathsep):
        exe = f"{d}/vllm" if d else None
        if exe and env.path(exe).is_file():
            home = env.venv_of_binary(exe)
            if home and not (env.root == Path("/") and _is_own_venv(home)):
                return home
    return None


def find_venv(env: Env, explicit: str | None) -> tuple[str, str, bool] | None:
    """(path, rule, is_box_path) of the target venv, first of --venv, VIRTUAL_ENV (when it is the
    doctor's own, as under `uv run`: the parent's VIRTUAL_ENV, then the vllm on PATH), the
    service, the manifest."""
    if explicit:
        return os.path.abspath(explicit), "--venv", False
    active = env.environ.get("VIRTUAL_ENV")
    # the doctor's own venv (activated, or set by `uv run`) holds no serving stack: look further
    if active and not (env.root == Path("/") and _is_own_venv(active)):
        return active, "VIRTUAL_ENV", True
    if active:  # the doctor's own: what the user had activated before `uv run` hid it
        parent = _parent_virtual_env(env)
        if parent and not _is_own_venv(parent) and env.exists(f"{parent}/pyvenv.cfg"):
            return parent, "VIRTUAL_ENV of the parent process", True
        on_path = _vllm_on_path(env)
        if on_path:
            return on_path, "vllm on PATH", True
    unit = read_unit(env)
    if unit and unit.get("argv"):
        home = env.venv_of_binary(unit["argv"][0])
        if home:
            return home, "service", True
        if unit["environment"].get("VIRTUAL_ENV"):
            return unit["environment"]["VIRTUAL_ENV"], "service", True
    try:
        manifest = read_manifest(env)
    except ValueError:
        manifest = None  # reported by the manifest fact
    if isinstance(manifest, dict) and isinstance(manifest.get("venv"), str):
        return manifest["venv"], "manifest", True
    return None


def deployed_venvs(env: Env) -> list[str]:
    """The box paths of the deployed venv: the service's and the manifest's (venv, current)."""
    out = []
    unit = read_unit(env)
    if unit and unit.get("argv"):
        out.append(env.venv_of_binary(unit["argv"][0]))
    try:
        manifest = read_manifest(env)
    except ValueError:
        manifest = None
    if isinstance(manifest, dict):
        out += [manifest.get(k) for k in ("venv", "current")]
    return [p for p in out if isinstance(p, str) and p]


def is_deployed(env: Env, host_path: Path) -> bool:
    """Whether the venv at host_path is the deployed one (same directory, links resolved)."""
    for p in deployed_venvs(env):
        # under a fake root (tests) a manifest may name a venv outside it: that path as written too
        for candidate in dict.fromkeys((env.path(p), Path(p))):
            try:
                if os.path.samefile(candidate, host_path):
                    return True
            except OSError:
                continue
    return False


def read_pyvenv_cfg(text: str) -> dict[str, str]:
    cfg = {}
    for line in text.splitlines():
        key, eq, val = line.partition("=")
        if eq:
            cfg[key.strip()] = val.strip()
    return cfg


def site_packages_dirs(venv: Path) -> list[Path]:
    seen, dirs = set(), []
    for lib in ("lib", "lib64"):
        for sp in sorted((venv / lib).glob("python3*/site-packages")):
            real = sp.resolve()
            if real not in seen:
                seen.add(real)
                dirs.append(sp)
    return dirs


def base_site_dirs(env: Env, cfg: dict[str, str], own: list[Path]) -> list[Path]:
    """Directories the venv's Python also imports from, after its own site-packages: the base
    interpreter's (`include-system-site-packages = true`; Debian's dist-packages too) and the
    plain directory lines of .pth files in its own site-packages (how a venv layers on another
    venv, e.g. a vendor image's torch venv). Box paths, mapped under a fake root."""
    extra: list[Path] = []
    if cfg.get("include-system-site-packages", "").lower() == "true" and cfg.get("home"):
        prefix = os.path.dirname(cfg["home"].rstrip("/"))
        ver = ".".join((cfg.get("version_info") or cfg.get("version") or "").split(".")[:2])
        if ver:
            extra += [env.path(f"{prefix}/lib/python{ver}/site-packages"),
                      env.path(f"{prefix}/local/lib/python{ver}/dist-packages"),
                      env.path(f"{prefix}/lib/python3/dist-packages")]
    for sp in own:
        for pth in sorted(sp.glob("*.pth")):
            for line in pth.read_text(errors="replace").splitlines():
                line = line.strip()
                if line.startswith("/") and not line.startswith("import"):
                    extra.append(env.path(line))
    seen = {p.resolve() for p in own}
    out = []
    for d in extra:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def unshadowed(dists: list[dict]) -> list[dict]:
    """The first distribution of each name in import order: the one Python and
    importlib.metadata see; a same-name one further down the path is shadowed. A dist-info
    without METADATA shadows nothing and is kept (after the others): it is a fault to report."""
    seen, out = set(), []
    for d in dists:
        if d.get("metadata") is not False and d["name"] not in seen:
            seen.add(d["name"])
            out.append(d)
    return out + [d for d in dists if d.get("metadata") is False]


# -- distributions ------------------------------------------------------------------------------


def read_metadata_header(path: Path) -> dict[str, str]:
    """Name and Version from a METADATA/PKG-INFO header (stops at the first blank line)."""
    fields: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                break
            key, colon, val = line.partition(":")
            if colon and key in ("Name", "Version") and key not in fields:
                fields[key] = val.strip()
    return fields


def record_heads(text: str) -> set[str]:
    """The first part of each RECORD row with its separator ("torch/", "six.py,"). A package's
    rows come together, so after a row in a directory the scan jumps (one regex search in C) to
    the first row outside it: torch's ~20k rows are a handful of steps, not 20k splits."""
    heads, pos, n = set(), 0, len(text)
    while pos < n:
        end = text.find("\n", pos)
        end = n if end < 0 else end
        line = text[pos:end]
        cut = min((i for i in (line.find("/"), line.find(",")) if i >= 0), default=-1)
        if cut < 0:
            pos = end + 1
            continue
        head = line[: cut + 1]
        heads.add(head)
        if head.endswith("/"):
            outside = re.compile(r"\n(?!" + re.escape(head) + ")").search(text, end)
            pos = n if outside is None else outside.start() + 1
        else:
            pos = end + 1
    return heads


def top_level_from_record(text: str) -> list[str]:
    """First path parts a distribution owns per RECORD: packages and modules, not its dist-info or scripts."""
    names = set()
    for head in record_heads(text):
        name = head[:-1].strip()
        if head.endswith(","):  # a top-level file (six.py, foo.cpython-312-x86_64-linux-gnu.so)
            if name and not name.endswith(".pth") and not name.startswith(".."):
                names.add(name.split(".", 1)[0])
        elif name and not name.startswith("..") and not name.endswith((".dist-info", ".data")) and name != "__pycache__":
            names.add(name)
    return sorted(names)


def requirements_of(metadata: Path) -> tuple[list[str] | None, str | None]:
    """(the `Requires-Dist: name==X` lines no extra guards, `Requires-Python`) of a METADATA
    header: what vLLM's build pins (`torch==2.14.0`, `>=3.11,<3.15`); (None, None) if unreadable."""
    pins, python = [], None
    try:
        with open(metadata, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, val = line.partition(":")
                if key == "Requires-Dist" and "==" in val and "extra" not in val:
                    pins.append(val.strip())
                elif key == "Requires-Python":
                    python = val.strip()
    except OSError:
        return None, None
    return pins, python


def _from_dir_name(d: Path) -> tuple[str, str]:
    """(name, version) from `name-version.dist-info`, the wheel spec's directory name."""
    stem = d.name.rsplit(".", 1)[0]
    name, _, ver = stem.partition("-")
    return name, ver


class RecordTops:
    """top_level_from_record of each dist-info's RECORD in one site-packages, kept in the doctor's
    cache folder between runs: a vLLM venv's RECORDs are megabytes (torch's alone ~20k rows), and
    what a distribution owns changes only when it is installed again, which rewrites its RECORD.
    Each entry is checked against the RECORD's size and mtime_ns; the file is keyed by the doctor's
    version and this module's bytes (a changed parser reads every RECORD again). JSON only."""

    VERSION = 1

    def __init__(self, sp: Path, use_cache: bool = True):
        self.path, self.key, self.old, self.new = None, None, {}, {}
        if not use_cache:
            return
        import hashlib  # noqa: PLC0415

        from .. import __version__  # noqa: PLC0415
        from ..cache import cache_dir, read_json  # noqa: PLC0415

        folder = cache_dir()
        try:
            source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
        except OSError:
            return
        if folder is None:
            return
        self.path = folder / f"records-{hashlib.sha256(str(sp).encode()).hexdigest()[:32]}.json"
        self.key = [self.VERSION, __version__, source, str(sp)]
        got = read_json(self.path, self.key)
        self.old = got if isinstance(got, dict) else {}

    def top_level(self, record: Path) -> list[str]:
        """What the RECORD's distribution owns; [] without a RECORD."""
        try:
            st = record.stat()
        except OSError:
            return []
        if not stat.S_ISREG(st.st_mode):
            return []
        name = record.parent.name
        kept = self.old.get(name)
        if (isinstance(kept, list) and len(kept) == 3 and kept[:2] == [st.st_size, st.st_mtime_ns]
                and isinstance(kept[2], list) and all(isinstance(t, str) for t in kept[2])):
            top = kept[2]
        else:
            top = top_level_from_record(record.read_text(errors="replace"))
        self.new[name] = [st.st_size, st.st_mtime_ns, top]
        return top

    def save(self) -> None:
        if self.path is not None and self.new != self.old:
            from ..cache import write_json  # noqa: PLC0415

            write_json(self.path, self.key, self.new)


def read_dist_info(d: Path, location: Path, tops: RecordTops | None = None) -> dict | None:
    tops = tops or RecordTops(location, use_cache=False)
    meta = d / "METADATA"
    if not meta.is_file():
        # an interrupted install or uninstall: importlib.metadata still lists it (with no
        # name or version), and what it owns per RECORD is still there
        name, ver = _from_dir_name(d)
        top = tops.top_level(d / "RECORD")
        return {"name": canonical_name(name), "version": ver, "installer": None, "location": str(location),
                "dist_info": d.name, "top_level": top, "metadata": False}
    header = read_metadata_header(meta)
    if "Name" not in header:
        return None
    installer = (d / "INSTALLER").read_text(errors="replace").strip() if (d / "INSTALLER").is_file() else None
    top = tops.top_level(d / "RECORD")
    return {
        "name": canonical_name(header["Name"]),
        "version": header.get("Version", ""),
        "installer": installer or None,
        "location": str(location),
        "dist_info": d.name,
        "top_level": top,
    }


def read_egg_info(d: Path, location: Path) -> dict | None:
    pkg_info = d / "PKG-INFO" if d.is_dir() else d
    if not pkg_info.is_file():
        return None
    header = read_metadata_header(pkg_info)
    if "Name" not in header:
        return None
    top_file = d / "top_level.txt"
    top = sorted(top_file.read_text().split()) if d.is_dir() and top_file.is_file() else []
    return {
        "name": canonical_name(header["Name"]),
        "version": header.get("Version", ""),
        "installer": None,
        "location": str(location),
        "dist_info": d.name,
        "top_level": top,
    }


def _read_entry(entry: Path, sp: Path, tops: RecordTops) -> dict | None:
    if entry.name.endswith(".dist-info"):
        return read_dist_info(entry, sp, tops)
    return read_egg_info(entry, sp)


def scan_site_packages(sp: Path) -> tuple[list[dict], list[dict]]:
    """(distributions, `~` leftovers) of one site-packages directory."""
    leftovers, metadata_dirs = [], []
    for entry in sorted(sp.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith("~"):
            # pip renames what it is removing to ~xxx; an interrupted uninstall leaves it behind
            kind = "dist-info" if name.endswith(".dist-info") else "dir" if entry.is_dir() else "file"
            leftovers.append({"name": name, "path": str(entry), "kind": kind})
        elif name.endswith((".dist-info", ".egg-info")):
            metadata_dirs.append(entry)
    # serial on purpose: threads measured slower here (138 dist-infos: 17 ms serial, 27-43 ms threaded)
    tops = RecordTops(sp)
    found = [_read_entry(e, sp, tops) for e in metadata_dirs]
    tops.save()
    return [d for d in found if d], leftovers


# -- torch and vLLM, read as text --------------------------------------------------------------


def module_constants(source: str) -> dict:
    """Top-level `NAME = literal` and `NAME: T = literal` assignments of a module, without running it."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, val = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, val = [node.target], node.value
        else:
            continue
        try:
            literal = ast.literal_eval(val)
        except ValueError:
            continue
        for t in targets:
            if isinstance(t, ast.Name):
                out[t.id] = literal
    return out


def torch_build(site_packages: list[Path]) -> dict:
    for sp in site_packages:
        path = sp / "torch" / "version.py"
        if path.is_file():
            consts = module_constants(path.read_text(errors="replace"))
            if "__version__" not in consts:
                return failed("no __version__ in torch/version.py", str(path))
            return value(
                {
                    "version": consts["__version__"],
                    "cuda": consts.get("cuda"),
                    "hip": consts.get("hip"),
                    "path": str(path),
                },
                str(path),
            )
    return absent("torch is not installed in the venv (no torch/version.py)")


def env_var_names(source: str) -> list[str]:
    """The string keys of envs.py's `environment_variables` dict that start with VLLM_."""
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "environment_variables":
            if isinstance(node.value, ast.Dict):
                keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
                return sorted(k for k in keys if k.startswith("VLLM_"))
    # not a dict literal (a future refactor): fall back to the quoted keys
    return sorted(set(re.findall(r'^\s*"(VLLM_[A-Z0-9_]+)"\s*:', source, re.MULTILINE)))


def backend_names(source: str) -> list[str]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name in BACKEND_CLASSES:
            names = []
            for stmt in node.body:
                if isinstance(stmt, ast.Assign):
                    names += [t.id for t in stmt.targets if isinstance(t, ast.Name) and t.id.isupper()]
            return names
    return []


def vllm_facts(site_packages: list[Path], dists: list[dict]) -> dict:
    root = next((sp for sp in site_packages if (sp / "vllm").is_dir()), None)
    dist = next((d for d in dists if d["name"] == "vllm"), None)
    if root is None and dist is None:
        why = absent("vLLM is not installed in the venv")
        return {"vllm.install": why, "vllm.env_vars": why, "vllm.attention_backends": why}
    facts: dict[str, dict] = {}
    version_py = None
    if root is not None and (root / "vllm" / "_version.py").is_file():
        consts = module_constants((root / "vllm" / "_version.py").read_text(errors="replace"))
        version_py = consts.get("__version__") or consts.get("version")
    version = dist["version"] if dist else version_py
    path = str(root / "vllm") if root is not None else dist["location"]
    install = {"version": version, "path": path, "version_py": version_py}
    # what a release newer than the knowledge is judged by: its own pins and its CUDA major
    if dist is not None:
        install["requires"], install["requires_python"] = requirements_of(Path(dist["location"]) / dist["dist_info"] / "METADATA")
    if root is not None:
        lib = next((root / rel for rel in VLLM_COMPILED if (root / rel).is_file()), None)
        needed = needed_libraries(str(lib)) if lib is not None else None
        install["cudart"] = next((n.rsplit(".", 1)[-1] for n in needed or () if n.startswith("libcudart.so.")), None)
    facts["vllm.install"] = value(install, path)
    if root is None:
        why = absent(f"vllm {version} has a dist-info but no vllm/ package", path)
        facts["vllm.env_vars"] = facts["vllm.attention_backends"] = why
        return facts
    envs = root / VLLM_ENVS
    if envs.is_file():
        facts["vllm.env_vars"] = value(env_var_names(envs.read_text(errors="replace")), str(envs))
    else:
        facts["vllm.env_vars"] = failed("no vllm/envs.py", str(envs))
    for rel in BACKEND_REGISTRIES:
        reg = root / rel
        if reg.is_file():
            names = backend_names(reg.read_text(errors="replace"))
            if names:
                facts["vllm.attention_backends"] = value(names, str(reg))
                break
    else:
        facts["vllm.attention_backends"] = failed(
            f"no attention-backend enum ({' / '.join(BACKEND_CLASSES)}) in {', '.join(BACKEND_REGISTRIES)}", path
        )
    return facts


VENV_KEYS = (
    "venv",
    "venv.distributions",
    "venv.leftovers",
    "torch.build",
    "vllm.install",
    "vllm.env_vars",
    "vllm.attention_backends",
)


def venv_facts(env: Env, explicit: str | None = None) -> dict:
    found = find_venv(env, explicit)
    if found is None:
        why = absent("no venv: pass --venv PATH, activate one (VIRTUAL_ENV), or deploy the gptoss-vllm service")
        return {k: why for k in VENV_KEYS}
    path, rule, box_path = found
    host = env.path(path) if box_path else Path(path)
    cfg_path = host / "pyvenv.cfg"
    if not cfg_path.is_file():
        error = f"{path} (from {rule}) is not a venv: no pyvenv.cfg there"
        if rule == "--venv":  # the user's own argument: a bad invocation, not a fact about the box
            raise VenvError(f"--venv {path}: not a venv (no pyvenv.cfg there); pass the venv's directory")
        return {k: failed(error, rule) for k in VENV_KEYS}
    cfg = read_pyvenv_cfg(cfg_path.read_text(errors="replace"))
    own = site_packages_dirs(host)
    sps = own + base_site_dirs(env, cfg, own)
    exe = host / "bin" / "python"
    link = os.readlink(exe) if exe.is_symlink() else None
    facts = {
        "venv": value(
            {
                "path": path,
                "rule": rule,
                "python": cfg.get("version_info") or cfg.get("version"),
                "site_packages": [str(sp) for sp in sps],
                "executable": str(exe),
                "executable_link": link,
                "executable_ok": exe.exists(),  # False for a link whose target is gone
                "home": cfg.get("home"),
                "deployed": is_deployed(env, host),
            },
            rule,
        )
    }
    dists, leftovers = [], []
    for sp in sps:
        d, left = scan_site_packages(sp)
        dists += d
        leftovers += left
    dists = unshadowed(dists)
    facts["venv.distributions"] = value(dists, ", ".join(str(sp) for sp in sps))
    facts["venv.leftovers"] = value(leftovers)
    facts["torch.build"] = torch_build(sps)
    facts.update(vllm_facts(sps, dists))
    if box_path and str(host) != path:
        facts = _rebase(facts, str(host), path)  # a fake root (tests): show the box's paths
        if env.root != Path("/"):  # the base's site-packages too
            facts = _rebase(facts, str(env.root), "")
    return facts


def _rebase(obj, host_prefix: str, box_prefix: str):
    """A copy of a JSON-like tree with host paths under a fake root written as the box's paths."""
    if isinstance(obj, dict):
        return {k: _rebase(v, host_prefix, box_prefix) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebase(v, host_prefix, box_prefix) for v in obj]
    if isinstance(obj, str) and host_prefix in obj:
        return obj.replace(host_prefix, box_prefix)
    return obj
