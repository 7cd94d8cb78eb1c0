"""Field parsers: one raw inventory value in, a clean value or one `ConfigError` out (pure).

The bottom of the deploy's config layers (docs/design.md): they know no key table, no host
facts and no knowledge; `keys.py` says which parser reads which data key.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Mapping
from urllib.parse import urlparse

from pyinfra.api.exceptions import PyinfraError


class ConfigError(PyinfraError):
    """Bad inventory data: one line, host + key + value + fix.

    A PyinfraError: the pyinfra CLI prints it as one line (`--> pyinfra error in ...: message`)
    and exits 1; raised in the prepare phase, it stops the run before anything changes anywhere."""


def bad(host: str, key: str, value: Any, problem: str, fix: str) -> ConfigError:
    shown = "<unset>" if value is None else repr(value)
    return ConfigError(f"host {host}: {key}={shown}: {problem}; fix: {fix}")


def field(obj: Any, name: str, default: Any = None) -> Any:
    """Knowledge rows may be dataclasses or dicts; read either."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v or "")[:3])


def check_int(host: str, key: str, value: Any, default: int, lo: int, hi: int, fix: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad(host, key, value, "not an integer", fix)
    try:
        n = int(value)
    except ValueError:
        raise bad(host, key, value, "not an integer", fix) from None
    if not lo <= n <= hi:
        raise bad(host, key, value, f"out of range {lo}..{hi}", fix)
    return n


def check_bool(host: str, key: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise bad(host, key, value, "not a boolean", f"set {key} to True or False")


def check_url(host: str, key: str, value: Any, fix: str) -> str:
    if not isinstance(value, str) or urlparse(value).scheme not in ("http", "https", "file"):
        raise bad(host, key, value, "not an http(s):// or file:// URL", fix)
    if not urlparse(value).netloc and urlparse(value).scheme != "file":
        raise bad(host, key, value, "URL has no host", fix)
    return value


def check_secret_file(host: str, key: str, value: Any, what: str) -> str | None:
    """An optional secret kept in a file on the controller: readable, not world-readable, one token."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad(host, key, value, "not a path", f"set {key} to the path of a file holding the {what}")
    path = os.path.expanduser(value)
    try:
        st = os.stat(path)
        text = read_api_key(path)
    except OSError as e:
        raise bad(host, key, value, f"cannot read it ({e.strerror})", "point it at an existing, readable file") from None
    if st.st_mode & stat.S_IROTH:
        raise bad(host, key, value, f"the {what} file is world-readable", f"chmod 600 {path}")
    if not text or any(c.isspace() for c in text):
        raise bad(host, key, value, f"the file must hold one {what} on one line", f"write only the {what} into {path}")
    return path


def read_api_key(path: str) -> str:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        return f.read().strip()


def check_abs_path(host: str, key: str, value: Any, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
        raise bad(host, key, value, "not an absolute path", f"use an absolute path such as {default}")
    return value.rstrip("/") or "/"


def check_str_list(host: str, key: str, value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise bad(host, key, value, "not a list of strings", f"set {key} to a list like ['--max-num-seqs', '128']")
    if any(v.startswith("--api-key") for v in value):
        raise bad(host, key, value, "the API key never goes on the command line", "use gptoss_api_key_file")
    return tuple(value)
