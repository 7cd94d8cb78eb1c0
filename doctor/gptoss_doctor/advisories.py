"""vLLM's known security advisories (knowledge/advisories.toml) and which apply to a deployment.

    load() -> [Advisory]                      validated; AdvisoryError names file, row and field
    advisories_for(vllm_version, serve_args, ...) -> [Applicable]
        the advisories whose range holds the version and whose condition holds (or cannot be
        ruled out) for that serve command line: what the doctor reports on a box, and what a
        deploy can warn about before it installs a stack.

A condition is judged from what a deploy or a box knows: the serve flags, the environment, the
served model, the routes the installed vLLM registers (the doctor's `vllm.http_surface` fact),
never by importing vLLM.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from . import serveargs
from .records import frozen_record

ADVISORIES_FILE = Path(__file__).parent / "knowledge" / "advisories.toml"
ADVISORIES_CACHE_VERSION = 1
SEVERITIES = ("critical", "high", "moderate", "low")
EXPOSURE = ("yes", "no", "conditional")
KINDS = {  # condition kind -> the fields it needs
    "serving": (), "api-key": (), "flag": ("flag",), "route": ("route",), "multimodal": (),
    "multi-node": (), "kv-connector": (),
}
_ID = re.compile(r"^(GHSA(-[23456789cfghjmpqrvwx]{4}){3}|CVE-\d{4}-\d{4,}|PYSEC-\d{4}-\d+)$")
# Serve flags that mean vLLM spans hosts (its nodes talk over ZeroMQ / torch.distributed).
MULTI_NODE_FLAGS = ("nnodes", "node-rank", "headless", "data-parallel-address", "data-parallel-start-rank",
                    "master-addr")


class AdvisoryError(ValueError):
    """A bad advisories file: `<file>: advisory <n> (<id>): <field>: <problem>`."""


@frozen_record
class Advisory:
    id: str
    aliases: tuple[str, ...]
    title: str
    affected: SpecifierSet
    fixed: str
    severity: str
    kind: str
    flag: str | None
    value: str | None
    route: str | None
    gpt_oss: str
    why: str
    source: str

    def affects(self, version: str) -> bool:
        try:
            return self.affected.contains(Version(version), prereleases=True)
        except InvalidVersion:
            return False

    def condition_text(self) -> str:
        if self.kind == "flag":
            return f"{self.flag}" + (f" {self.value}" if self.value else "") + " on the serve command line"
        if self.kind == "route":
            return f"the server registers {self.route}"
        return {"serving": "any client of the API", "api-key": "the deployment relies on vLLM's API key",
                "multimodal": "a multimodal model", "multi-node": "vLLM spans several hosts",
                "kv-connector": "a KV-transfer connector (--kv-transfer-config)"}[self.kind]


@frozen_record
class Applicable:
    advisory: Advisory
    holds: bool | None  # None: could not be ruled out from what is known (no installed source yet)
    why: str

    def to_dict(self) -> dict:
        a = self.advisory
        return {"id": a.id, "aliases": list(a.aliases), "title": a.title, "affected": str(a.affected),
                "fixed": a.fixed or None, "severity": a.severity, "condition": a.condition_text(),
                "holds": self.holds, "why": self.why, "source": a.source}


def _field(where: str, row: dict, name: str, kind: type, required: bool = True):
    val = row.get(name)
    if val is None:
        if required:
            raise AdvisoryError(f"{where}: {name}: missing")
        return None
    if not isinstance(val, kind):
        raise AdvisoryError(f"{where}: {name}: {val!r} is not a {kind.__name__}")
    return val


def _decode(text: str, file: str) -> dict:
    # tomllib (and the datetime it imports) only where a file is parsed, not on every doctor run
    try:
        import tomllib  # noqa: PLC0415
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # noqa: PLC0415
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AdvisoryError(f"{file}: not TOML ({e})") from None


def _decode_cached(text: str, file: str) -> dict:
    """_decode(text), from the doctor's cache when the same text was decoded before: the decoded
    TOML kept as JSON (plain data, never code), named by the file's path, keyed by its SHA-256.
    Validation (parse) still runs on every load."""
    import hashlib  # noqa: PLC0415

    from .cache import cache_dir, read_json, write_json  # noqa: PLC0415

    folder = cache_dir()
    key = [ADVISORIES_CACHE_VERSION, hashlib.sha256(text.encode()).hexdigest()]
    path = folder / f"advisories-{hashlib.sha256(file.encode()).hexdigest()[:32]}.json" if folder else None
    data = read_json(path, key)
    if isinstance(data, dict):
        return data
    data = _decode(text, file)
    try:
        write_json(path, key, data)
    except (TypeError, ValueError):  # a value JSON cannot hold (a TOML date): decoded every time
        pass
    return data


def parse(text: str, file: str, data: dict | None = None) -> list[Advisory]:
    """The validated advisories of a file's `text`; `data`: that text already decoded."""
    if data is None:
        data = _decode(text, file)
    unknown = set(data) - {"advisory"}
    if unknown:
        raise AdvisoryError(f"{file}: unknown table {sorted(unknown)[0]!r} (only [[advisory]] rows)")
    rows = data.get("advisory") or []
    out: list[Advisory] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        where = f"{file}: advisory {n} ({row.get('id', '?')})"
        ident = _field(where, row, "id", str)
        if not _ID.match(ident):
            raise AdvisoryError(f"{where}: id: {ident!r} is not a GHSA, CVE or PYSEC id")
        if ident in seen:
            raise AdvisoryError(f"{where}: id: listed twice")
        seen.add(ident)
        aliases = _field(where, row, "aliases", list, required=False) or []
        bad = [a for a in aliases if not isinstance(a, str) or not _ID.match(a)]
        if bad:
            raise AdvisoryError(f"{where}: aliases: {bad[0]!r} is not a GHSA, CVE or PYSEC id")
        try:
            affected = SpecifierSet(_field(where, row, "affected", str))
        except InvalidSpecifier:
            raise AdvisoryError(f"{where}: affected: {row['affected']!r} is not a PEP 440 specifier set") from None
        if not str(affected):
            raise AdvisoryError(f"{where}: affected: empty (every version?); write the advisory's range")
        fixed = _field(where, row, "fixed", str)
        if fixed:
            try:
                if affected.contains(Version(fixed), prereleases=True):
                    raise AdvisoryError(f"{where}: fixed: {fixed} is inside affected {affected}")
            except InvalidVersion:
                raise AdvisoryError(f"{where}: fixed: {fixed!r} is not a version") from None
        severity = _field(where, row, "severity", str)
        if severity not in SEVERITIES:
            raise AdvisoryError(f"{where}: severity: {severity!r} not one of {', '.join(SEVERITIES)}")
        cond = _field(where, row, "condition", dict)
        kind = cond.get("kind")
        if kind not in KINDS:
            raise AdvisoryError(f"{where}: condition.kind: {kind!r} not one of {', '.join(KINDS)}")
        for need in KINDS[kind]:
            if not isinstance(cond.get(need), str) or not cond[need]:
                raise AdvisoryError(f"{where}: condition.{need}: needed for kind {kind!r}")
        extra = set(cond) - {"kind", "value", *KINDS[kind]}
        if extra:
            raise AdvisoryError(f"{where}: condition: unknown key {sorted(extra)[0]!r} for kind {kind!r}")
        gpt_oss = _field(where, row, "gpt_oss", str)
        if gpt_oss not in EXPOSURE:
            raise AdvisoryError(f"{where}: gpt_oss: {gpt_oss!r} not one of {', '.join(EXPOSURE)}")
        source = _field(where, row, "source", str)
        if not source.startswith("https://"):
            raise AdvisoryError(f"{where}: source: {source!r} is not an https:// URL")
        known = {"id", "aliases", "title", "affected", "fixed", "severity", "condition", "gpt_oss", "why", "source"}
        if set(row) - known:
            raise AdvisoryError(f"{where}: unknown field {sorted(set(row) - known)[0]!r}")
        out.append(Advisory(
            id=ident, aliases=tuple(aliases), title=_field(where, row, "title", str), affected=affected,
            fixed=fixed, severity=severity, kind=kind, flag=cond.get("flag"), value=cond.get("value"),
            route=cond.get("route"), gpt_oss=gpt_oss, why=_field(where, row, "why", str), source=source,
        ))
    return out


@functools.lru_cache(maxsize=None)
def load(path: str | None = None) -> tuple[Advisory, ...]:
    p = Path(path) if path else ADVISORIES_FILE
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise AdvisoryError(f"{p}: cannot read it ({e.strerror or e})") from None
    return tuple(parse(text, str(p), _decode_cached(text, str(p))))


# -- judging a deployment ---------------------------------------------------------------------------


def serve_flags(serve_args: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """{canonical flag: value} of a serve command line (argv, the words after `serve`, or flags)."""
    if serve_args is None:
        return {}
    if isinstance(serve_args, Mapping):
        return {serveargs.canonical_flag("--" + str(k).lstrip("-")): str(v) for k, v in serve_args.items()}
    words = list(serve_args)
    after = serveargs.serve_words(words)
    return serveargs.parse_flags(after if after is not None else words)[1]


def _flag(flags: Mapping[str, str], name: str) -> str | None:
    return flags.get(serveargs.canonical_flag(name))


def judge(advisory: Advisory, flags: Mapping[str, str], environ: Mapping[str, str], *,
          multimodal: bool | None, api_key_set: bool | None, routes: Iterable[str] | None) -> tuple[bool | None, str]:
    """(whether the condition holds: True / False / None for cannot tell, and why)."""
    kind = advisory.kind
    if kind == "serving":
        return True, "any client of the API can send the request"
    if kind == "api-key":
        if api_key_set is None:
            return None, "whether the deployment sets an API key is not known"
        return api_key_set, "the deployment relies on vLLM's API key" if api_key_set else "no API key is set"
    if kind == "flag":
        got = _flag(flags, advisory.flag)
        if got is None:
            return False, f"{advisory.flag} is not set"
        if advisory.value and got != advisory.value:
            return False, f"{advisory.flag} is {got}, not {advisory.value}"
        return True, f"{advisory.flag} {got} is set"
    if kind == "route":
        if routes is None:
            return None, f"whether this vLLM registers {advisory.route} is read from its installed source"
        on = advisory.route in set(routes)
        return on, f"the installed vLLM {'registers' if on else 'does not register'} {advisory.route}"
    if kind == "multimodal":
        if multimodal is None:
            return None, "the served model is not in the knowledge: whether it is multimodal is not known"
        return multimodal, "the served model is " + ("multimodal" if multimodal else "text-only")
    if kind == "multi-node":
        hits = [f for f in MULTI_NODE_FLAGS if _flag(flags, f) is not None]
        if _flag(flags, "distributed-executor-backend") == "ray":
            hits.append("distributed-executor-backend ray")
        if hits:
            return True, "multi-node flags: " + ", ".join(f"--{h}" for h in hits)
        return False, "no multi-node flag (single host)"
    if kind == "kv-connector":
        on = _flag(flags, "kv-transfer-config") is not None
        return on, "--kv-transfer-config is " + ("set" if on else "not set")
    raise AssertionError(kind)


def advisories_for(vllm_version: str, serve_args: Sequence[str] | Mapping[str, str] | None = None, *,
                   environ: Mapping[str, str] | None = None, multimodal: bool | None = False,
                   api_key_set: bool | None = None, routes: Iterable[str] | None = None,
                   advisories: Sequence[Advisory] | None = None) -> list[Applicable]:
    """The advisories that apply to vLLM `vllm_version` served with `serve_args`, worst first.

    `multimodal` defaults to False: every model the project serves is gpt-oss (text-only). An
    advisory whose condition cannot be ruled out (a route, before the stack is installed) is
    returned with `holds=None`. `api_key_set=None` reads the key from `serve_args`/`environ`.
    """
    flags = serve_flags(serve_args)
    environ = dict(environ or {})
    if api_key_set is None:
        api_key_set = _flag(flags, "api-key") is not None or bool(environ.get("VLLM_API_KEY"))
    out = []
    for adv in advisories if advisories is not None else load():
        if not adv.affects(vllm_version):
            continue
        holds, why = judge(adv, flags, environ, multimodal=multimodal, api_key_set=api_key_set, routes=routes)
        if holds is not False:
            out.append(Applicable(adv, holds, why))
    return sorted(out, key=lambda a: (SEVERITIES.index(a.advisory.severity), a.advisory.id))


def first_clear(candidates: Iterable[str], serve_args=None, **kw) -> str | None:
    """The first version of `candidates` (in the order given) that no advisory applies to."""
    for version in candidates:
        if not advisories_for(version, serve_args, **kw):
            return version
    return None


def warning_lines(vllm_version: str, found: Iterable[Applicable]) -> list[str]:
    """One line per applicable advisory, for a deploy to print before it installs the stack."""
    lines = []
    for a in found:
        adv = a.advisory
        state = "applies" if a.holds else "may apply"
        lines.append(f"vLLM {vllm_version}: {adv.id} ({adv.severity}) {state}: {adv.title}; "
                     f"{a.why}; fixed in {adv.fixed or 'no release yet'}; {adv.source}")
    return lines
