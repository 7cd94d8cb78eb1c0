"""Redaction of secrets in snapshots, reports and rendered output.

A value is secret when its *name* says so (KEY, TOKEN, SECRET, PASSWORD as a word of the
name: `HF_TOKEN`, `VLLM_API_KEY`, `--api-key`; not `TIKTOKEN_ENCODINGS_BASE` nor
`max_tokens`) or when the *value* looks like a credential (`hf_...`, `sk-...`, GitHub's `ghp_...`/`github_pat_...`, `Bearer ...`,
a URL with a password). Only strings are replaced; `api_key_set: true` stays a bool.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

MASK = "***"

# A secret word bounded by start/end or a separator, so TIKTOKEN and TOKENIZER do not match.
_SECRET_NAME = re.compile(
    r"(?:^|[_\-.])(?:api[_-]?key|key|token|secret|password|passwd|credentials?)(?:$|[_\-.])",
    re.IGNORECASE,
)
_SECRET_VALUE = [
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-" + MASK),
    # GitHub tokens: classic (ghp_ personal, gho_ OAuth, ghu_ user-to-server, ghs_ server, ghr_ refresh)
    # and fine-grained (github_pat_); a mirror URL or a pip.conf line may carry one
    (re.compile(r"\b(gh[pousr])_[A-Za-z0-9]{20,}"), r"\1_" + MASK),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), "github_pat_" + MASK),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*"), r"\1 " + MASK),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]+):[^@\s/]+@"), r"\1:" + MASK + "@"),
    # `--api-key VALUE`, `--api-key=VALUE` and `X_TOKEN=VALUE` inside free text (log lines, ExecStart)
    (re.compile(r"(?i)(--[a-z\-]*(?:api-key|token|secret|password)[a-z\-]*)(=|\s+)(?!\*\*\*)\S+"), r"\1\2" + MASK),
    (
        re.compile(r"(?i)\b([A-Z0-9_]*(?:_KEY|_TOKEN|_SECRET|_PASSWORD|^TOKEN|^KEY))=(?!\*\*\*)(\"[^\"]*\"|'[^']*'|\S+)"),
        r"\1=" + MASK,
    ),
]


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


# Every pattern above needs one of these; most strings (paths, versions, names) have none, and a
# snapshot holds thousands of them: one search instead of six substitutions each.
_MAYBE_SECRET = re.compile(r"hf_|sk-|gh[pousr]_|github_pat_|@|--|=|(?i:bearer)")


def redact_text(text: str) -> str:
    if not _MAYBE_SECRET.search(text):
        return text
    for pattern, repl in _SECRET_VALUE:
        text = pattern.sub(repl, text)
    return text


def redact_url(url: str) -> str:
    """A URL without its userinfo (`https://user:pw@host:port/p` -> `https://***@host:port/p`):
    a mirror's user name may itself be a token, so all of it goes, unlike `redact_text`."""
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415 - only the deploys' mirror URLs need it

    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query, parts.fragment))


def redact_value(name: str, value: Any) -> Any:
    if isinstance(value, str):
        if is_secret_name(name) and value:
            return MASK
        return redact_text(value)
    return redact_tree(value)


def redact_argv(argv: Iterable[str]) -> list[str]:
    """`--api-key X` and `--api-key=X` lose X; other words go through `redact_text`."""
    out: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if word.startswith("-") and "=" in word:
            flag, _, val = word.partition("=")
            out.append(f"{flag}={MASK}" if is_secret_name(flag.lstrip('-')) and val else redact_text(word))
            continue
        if word.startswith("--") and is_secret_name(word.lstrip("-")):
            hide_next = True
        out.append(redact_text(word))
    return out


def redact_tree(obj: Any) -> Any:
    """A copy of a JSON-like tree with secret-named string fields and secret-looking strings masked."""
    if isinstance(obj, dict):
        return {k: redact_value(str(k), v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, str) for v in obj):
            return redact_argv(obj)  # argv-like: a secret flag hides the word after it
        return [redact_tree(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
