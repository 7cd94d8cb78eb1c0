"""Files that matter for safety and offline serving: world-readable secrets, tiktoken and HF caches."""

from __future__ import annotations

import os
import stat
from pathlib import PurePosixPath

from ..layout import ETC as SECRET_DIR
from ..redact import is_secret_name, redact_text
from ..snapshot import value
from .env import Env
from .live import home_of
from .service import parse_env_file, read_unit



def _others_can_reach(env: Env, box_path: str) -> bool:
    """Every directory from / down to the file is searchable by others (o+x)."""
    parents = list(PurePosixPath(box_path).parents)[:-1]  # without "/" itself
    return all(os.stat(env.path(str(p))).st_mode & stat.S_IXOTH for p in parents)


def secret_kind(box_path: str, text: str) -> str | None:
    """What secret a file holds, or None: by its name, its KEY=VALUE names, or credential-looking values."""
    name = PurePosixPath(box_path).name
    if is_secret_name(name.replace(".", "_")) and text.strip():
        return f"{name}: a secret by its name"
    named = sorted(k for k, v in parse_env_file(text).items() if v and is_secret_name(k))
    if named:
        return "sets " + ", ".join(named)
    if redact_text(text) != text:
        return "holds a token-like value"
    return None


def candidate_secret_files(env: Env, unit: dict | None, environ: dict) -> list[str]:
    paths = []
    if env.path(SECRET_DIR).is_dir():
        paths += sorted(f"{SECRET_DIR}/{p.name}" for p in env.path(SECRET_DIR).iterdir() if p.is_file())
    if unit:
        paths += unit["environment_files"]
    for source in (environ, (unit or {}).get("environment", {})):
        if source.get("HF_TOKEN_PATH"):
            paths.append(source["HF_TOKEN_PATH"])
        if source.get("HF_HOME"):
            paths.append(f"{source['HF_HOME']}/token")
    for user in {"root", (unit or {}).get("user") or "root"}:
        paths.append(f"{home_of(env, user)}/.cache/huggingface/token")
    return list(dict.fromkeys(paths))


def world_readable_secrets(env: Env) -> dict:
    unit = read_unit(env)
    found = []
    for path in candidate_secret_files(env, unit, dict(env.environ)):
        host = env.path(path)
        if not host.is_file():
            continue
        mode = host.stat().st_mode
        if not mode & stat.S_IROTH or not _others_can_reach(env, path):
            continue
        try:
            text = host.read_text(errors="replace")
        except OSError:
            continue
        what = secret_kind(path, text)
        if what:
            found.append({"path": path, "mode": f"{stat.S_IMODE(mode):04o}", "what": what})
    return {"files.world_readable_secrets": value(found, f"{SECRET_DIR}/*, EnvironmentFile=, HF token files")}


def offline_files(env: Env) -> dict:
    unit = read_unit(env)
    service_env = (unit or {}).get("environment", {})

    def setting(name: str) -> tuple[str | None, str | None]:
        if service_env.get(name):
            return service_env[name], "service"
        if env.environ.get(name):
            return env.environ[name], "shell"
        return None, None

    tiktoken_dir, tiktoken_from = setting("TIKTOKEN_ENCODINGS_BASE")
    files = []
    if tiktoken_dir and env.path(tiktoken_dir).is_dir():
        files = sorted(p.name for p in env.path(tiktoken_dir).iterdir() if p.is_file())
    # tiktoken's own download cache (files named by the sha1 of their URL), which openai_harmony
    # also falls back to: staged encodings may live here instead of TIKTOKEN_ENCODINGS_BASE
    cache_dir, _ = setting("TIKTOKEN_CACHE_DIR")
    cache_files = []
    if cache_dir and env.path(cache_dir).is_dir():
        cache_files = sorted(p.name for p in env.path(cache_dir).iterdir() if p.is_file())
    hf_home, hf_from = setting("HF_HOME")
    if not hf_home:
        hf_home = f"{home_of(env, (unit or {}).get('user'))}/.cache/huggingface"
    hub, _ = setting("HF_HUB_CACHE")
    hub = hub or f"{hf_home}/hub"
    models = []
    if env.path(hub).is_dir():
        models = sorted(
            p.name[len("models--") :].replace("--", "/", 1) for p in env.path(hub).iterdir() if p.name.startswith("models--")
        )
    return {
        "hf.offline_files": value(
            {
                "tiktoken_dir": tiktoken_dir,
                "tiktoken_dir_exists": bool(tiktoken_dir) and env.path(tiktoken_dir).is_dir(),
                "tiktoken_from": tiktoken_from,
                "files": files,
                "tiktoken_cache_dir": cache_dir,
                "tiktoken_cache_files": cache_files,
                "hf_home": hf_home,
                "hf_home_from": hf_from,
                "hub_cache": hub,
                "hub_models": models,
            },
            "TIKTOKEN_ENCODINGS_BASE, TIKTOKEN_CACHE_DIR, HF_HOME, HF_HUB_CACHE",
        )
    }


COLLECTORS = [
    (world_readable_secrets, ("files.world_readable_secrets",)),
    (offline_files, ("hf.offline_files",)),
]
