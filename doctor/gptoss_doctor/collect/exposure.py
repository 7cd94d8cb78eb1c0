"""Who can reach vLLM's own port, and what its installed key check leaves open.

Two facts, both read without importing vLLM:

* `service.listen`: the address and port the deployed service is told to bind (its unit's serve
  argv, else the manifest), and the sockets listening on this box (/proc/net/tcp, tcp6), each
  tagged with whether a vLLM server process owns it (its /proc/PID/fd links).
* `vllm.http_surface`: the installed vLLM's HTTP surface, parsed with `ast` from the files under
  its `entrypoints` packages: the API-key check (the middleware that tests the request path with
  `startswith`, and the prefixes it guards) and every route the source registers (`@router.post(
  "/x")`, `add_api_route`, `Mount("/metrics")`, FastAPI's default `/docs`, `/redoc`,
  `/openapi.json`), each with the conditions under which it is registered (the `if` tests around
  it and around the imports that reach it), as source text the checks judge against the flags.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from .. import serveargs
from ..snapshot import absent, failed, value
from .env import Env
from .live import listen_table
from .service import MANIFEST, read_manifest, read_unit
from .venv import find_venv, site_packages_dirs

PROC_NET = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_ROUTE_METHODS = {"get": "GET", "post": "POST", "put": "PUT", "delete": "DELETE", "patch": "PATCH",
                  "head": "HEAD", "options": "OPTIONS", "websocket": "WEBSOCKET"}
_ROUTE_CALLS = {"api_route", "add_api_route", "add_route", "route", "mount", "add_websocket_route"}
_ROUTE_CLASSES = {"Mount": ("GET",), "Route": ("GET",), "APIRoute": ("GET",), "WebSocketRoute": ("WEBSOCKET",)}
# FastAPI(...) registers these unless the keyword is None (fastapi.applications.FastAPI.__init__)
FASTAPI_DEFAULTS = (("openapi_url", "/openapi.json"), ("docs_url", "/docs"), ("redoc_url", "/redoc"))
_MAX_FILES = 3000
_MAX_ALTERNATIVES = 16
# A file is worth parsing when it may register a route, build the app or check the key.
_INTERESTING = re.compile(r"""\(\s*["']/|FastAPI\(|startswith\(""")


# -- sockets -----------------------------------------------------------------------------------


def _hex_address(text: str) -> tuple[str, int]:
    """`0100007F:1F40` -> ("127.0.0.1", 8000); the IPv6 form is four little-endian 32-bit words."""
    addr, _, port = text.partition(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        host = ".".join(str(b) for b in raw[::-1])
    else:
        import ipaddress

        words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        host = str(ipaddress.IPv6Address(words))
    return host, int(port, 16)


def listening_sockets(env: Env) -> tuple[list[dict], list[str]]:
    """Listening TCP sockets: [{"address", "port", "inode"}] and the tables that could not be read."""
    sockets, unread = [], []
    for table in PROC_NET:
        text = listen_table(env, table)
        if text is None:
            unread.append(f"{table}: cannot read it")
            continue
        for line in text.splitlines()[1:]:
            cols = line.split()
            if len(cols) < 10 or cols[3] != _LISTEN:
                continue
            host, port = _hex_address(cols[1])
            sockets.append({"address": host, "port": port, "inode": int(cols[9])})
    return sockets, unread


def vllm_processes(env: Env) -> dict[int, set[int]]:
    """{pid: socket inodes it holds} for every vLLM server process (`serve` / api_server argv)."""
    out: dict[int, set[int]] = {}
    proc = str(env.path("/proc"))
    try:
        pids = [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if b"vllm" not in raw:  # most processes: not decoded, not parsed
            continue
        argv = raw.decode(errors="replace").split("\0")
        if serveargs.serve_words([w for w in argv if w]) is None:
            continue
        inodes: set[int] = set()
        try:
            for fd in os.listdir(f"{proc}/{pid}/fd"):
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except OSError:
            pass  # not ours to read (not root): ownership stays unknown
        out[pid] = inodes
    return out


def configured_listen(env: Env) -> dict | None:
    """{"host", "port", "from"} the deployed service binds: its unit's argv, else the manifest."""
    unit = read_unit(env)
    if unit and unit.get("argv"):
        try:
            serve = serveargs.parse(unit["argv"], unit["environment"])
            return {"host": serve["host"], "port": serve["port"], "from": f"{unit['unit_path']} ExecStart="}
        except serveargs.ServeArgsError:
            pass
    try:
        manifest = read_manifest(env)
    except ValueError:
        manifest = None
    if isinstance(manifest, dict) and manifest.get("port") is not None:
        host = manifest.get("host") or serveargs.DEFAULT_HOST
        try:
            return {"host": str(host), "port": int(manifest["port"]), "from": MANIFEST}
        except (TypeError, ValueError):
            return None
    return None


def listen_fact(env: Env) -> dict:
    configured = configured_listen(env)
    sockets, unread = listening_sockets(env)
    owners = vllm_processes(env)
    owned = {inode: pid for pid, inodes in owners.items() for inode in inodes}
    known = any(owners.values())  # some vLLM process's fds were readable
    for s in sockets:
        pid = owned.get(s["inode"])
        s["pid"] = pid
        s["vllm"] = True if pid is not None else (False if known else None)
    if configured is None and not owners:
        return {"service.listen": absent("no deployed vLLM service (unit or manifest) and no vLLM process running",
                                         "/proc/net/tcp")}
    return {"service.listen": value({
        "host": configured["host"] if configured else None,
        "port": configured["port"] if configured else None,
        "from": configured["from"] if configured else None,
        "sockets": sockets,
        "sockets_unread": unread,
        "vllm_pids": sorted(owners),
    }, ", ".join(PROC_NET))}


# -- the installed vLLM's HTTP surface ------------------------------------------------------------


def _entrypoint_files(vllm_dir: Path) -> list[Path]:
    files = sorted(p for p in vllm_dir.rglob("*.py") if "entrypoints" in p.relative_to(vllm_dir).parts[:-1])
    return files[:_MAX_FILES]


def _module_name(rel: str) -> str:
    mod = rel[: -len(".py")].replace("/", ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


def _str_const(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _prefixes_of(node, constants: dict[str, list[str]]) -> list[str] | None:
    """The path prefixes a `startswith(ARG)` tests: a literal, a tuple of literals, or a module constant."""
    if _str_const(node) is not None:
        return [node.value]
    if isinstance(node, ast.Tuple) and all(_str_const(e) is not None for e in node.elts):
        return [e.value for e in node.elts]
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return None


def find_guard(tree: ast.Module) -> dict | None:
    """The API-key check in one module: a class or function that reads the Authorization header
    (or verifies a token) and tests the request path with `startswith("/...")`; the prefixes it tests."""
    constants: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            got = _prefixes_of(node.value, {})
            if got and all(p.startswith("/") for p in got):
                constants[node.targets[0].id] = got
    for node in ast.walk(tree):
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        text = ast.dump(node)
        if "'Authorization'" not in text and "verify_token" not in text and "api_token" not in text:
            continue
        prefixes: list[str] = []
        for call in ast.walk(node):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "startswith"
                    and call.args):
                got = _prefixes_of(call.args[0], constants)
                prefixes += [p for p in got or [] if p.startswith("/") and p not in prefixes]
        if prefixes:
            return {"name": node.name, "line": node.lineno, "prefixes": prefixes}
    return None


class _Walker:
    """Routes, guard, and conditional imports of one module, with the `if` tests around each."""

    def __init__(self, module: str, rel: str):
        self.module, self.rel = module, rel
        self.routes: list[dict] = []
        self.imports: list[tuple[str | None, str, str | None, tuple[str, ...]]] = []  # (unit fn, module, name, conds)
        self.local_calls: set[str] = set()
        self.includes: list[tuple[str, tuple[str, ...], str | None]] = []  # (router name, conds, unit fn)

    def walk(self, nodes, conds: tuple[str, ...], fn: str | None) -> None:
        for node in nodes:
            self.visit(node, conds, fn)
            if (isinstance(node, ast.If) and not node.orelse and node.body
                    and isinstance(node.body[-1], (ast.Return, ast.Raise))):
                conds = conds + (f"not ({ast.unparse(node.test)})",)  # a guard clause: the rest runs only past it

    def visit(self, node, conds: tuple[str, ...], fn: str | None) -> None:
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            self.scan_expr(node.test, conds, fn)
            self.walk(node.body, conds + (test,), fn)
            self.walk(node.orelse, conds + (f"not ({test})",), fn)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for dec in getattr(node, "decorator_list", []):
                self.scan_expr(dec, conds, fn)
            self.walk(node.body, conds, fn or node.name)
            return
        if isinstance(node, ast.ImportFrom):
            target = self.resolve(node)
            for alias in node.names:
                self.imports.append((fn, target, alias.name, conds))
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.imports.append((fn, alias.name, None, conds))
            return
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                self.visit(child, conds, fn)
            else:
                self.scan_expr(child, conds, fn)

    def resolve(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.module.split(".")
        is_pkg = self.rel.endswith("__init__.py")
        base = base[: len(base) - node.level + (1 if is_pkg else 0)]
        return ".".join(base + ([node.module] if node.module else []))

    def scan_expr(self, expr, conds: tuple[str, ...], fn: str | None) -> None:
        for call in ast.walk(expr):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if isinstance(func, ast.Name):
                self.local_calls.add(name)
            if name == "include_router" and call.args and isinstance(call.args[0], ast.Name):
                self.includes.append((call.args[0].id, conds, fn))
            path = _str_const(call.args[0]) if call.args else None
            if name == "FastAPI":
                kws = {k.arg: k.value for k in call.keywords if k.arg}
                for kw, default in FASTAPI_DEFAULTS:
                    given = kws.get(kw)
                    if given is None:
                        self.add(default, ("GET",), call, conds, fn)
                    elif _str_const(given):
                        self.add(given.value, ("GET",), call, conds, fn)
                continue
            if not path or not path.startswith("/"):
                continue
            if isinstance(func, ast.Attribute) and name in _ROUTE_METHODS:
                self.add(path, (_ROUTE_METHODS[name],), call, conds, fn)
            elif isinstance(func, ast.Attribute) and name in _ROUTE_CALLS:
                methods = ("GET",) if name == "mount" else self.methods_kw(call) or ("GET",)
                self.add(path, methods, call, conds, fn)
            elif name in _ROUTE_CLASSES:
                self.add(path, self.methods_kw(call) or _ROUTE_CLASSES[name], call, conds, fn)

    @staticmethod
    def methods_kw(call: ast.Call) -> tuple[str, ...] | None:
        for k in call.keywords:
            if k.arg == "methods" and isinstance(k.value, (ast.List, ast.Tuple, ast.Set)):
                got = tuple(e.value.upper() for e in k.value.elts if _str_const(e))
                return got or None
        return None

    def add(self, path: str, methods: tuple[str, ...], call, conds, fn) -> None:
        func = call.func
        receiver = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        self.routes.append({"path": path, "methods": list(methods), "file": self.rel, "line": call.lineno,
                            "conds": conds, "fn": fn, "receiver": receiver})

    def route_gate(self, route: dict, gates: "_Gates") -> list[frozenset]:
        """A route on a module-level router is registered where the module includes that router
        (`app.include_router(router)`, under its own tests); any other where its code runs."""
        if route["fn"] is None and route["receiver"]:
            included = [(c, f) for name, c, f in self.includes if name == route["receiver"]]
            if included:
                dnf: list[frozenset] = []
                for conds, fn in included:
                    dnf += _and(gates.gate(self.module, fn), conds)
                return _and(_minimal(dnf), route["conds"])
        return _and(gates.gate(self.module, route["fn"]), route["conds"])


def _and(dnf: list[frozenset], conds) -> list[frozenset]:
    return [alt | frozenset(conds) for alt in dnf]


def _minimal(dnf: list[frozenset]) -> list[frozenset]:
    out: list[frozenset] = []
    for alt in sorted(set(dnf), key=len):
        if not any(o <= alt for o in out):
            out.append(alt)
    return out[:_MAX_ALTERNATIVES]


class _Gates:
    """When a unit of code (a module's top level, or one of its top-level functions) runs: the
    OR, over everything that imports it, of the importer's own gate AND the tests around the import."""

    def __init__(self, walkers: dict[str, _Walker]):
        self.walkers = walkers
        self.memo: dict[tuple[str, str | None], list[frozenset]] = {}
        self.active: set[tuple[str, str | None]] = set()

    def importers(self, module: str, fn: str | None):
        for w in self.walkers.values():
            for unit_fn, target, name, conds in w.imports:
                if fn is None:
                    hit = target == module or (name is not None and f"{target}.{name}" == module)
                else:
                    hit = target == module and name == fn
                if hit and (w.module, unit_fn) != (module, fn):
                    yield (w.module, unit_fn), conds

    def gate(self, module: str, fn: str | None) -> list[frozenset]:
        unit = (module, fn)
        if unit in self.memo:
            return self.memo[unit]
        if unit in self.active:
            return []  # an import cycle adds no way in
        self.active.add(unit)
        dnf: list[frozenset] = []
        found = False
        for importer, conds in self.importers(module, fn):
            found = True
            dnf += _and(self.gate(*importer), conds)
        walker = self.walkers.get(module)
        if not found or (fn is not None and walker is not None and fn in walker.local_calls):
            dnf.append(frozenset())  # a root (nothing imports it), or called in its own module
        self.active.discard(unit)
        self.memo[unit] = _minimal(dnf) or [frozenset()]
        return self.memo[unit]


def installed_vllm(site_packages: list[Path]) -> Path:
    """The `vllm` package folder of the first site-packages that has one."""
    vllm_dir = next((Path(sp) / "vllm" for sp in site_packages if (Path(sp) / "vllm" / "__init__.py").is_file()), None)
    if vllm_dir is None:
        raise FileNotFoundError("no vllm package in " + ", ".join(map(str, site_packages)))
    return vllm_dir


def read_http_surface(site_packages: list[Path]) -> dict:
    """The installed vLLM's key check and routes, from its source (see the module docstring)."""
    return parse_http_surface(installed_vllm(site_packages))


def parse_http_surface(vllm_dir: Path) -> dict:
    walkers: dict[str, _Walker] = {}
    guard = None
    unparsed = []
    for path in _entrypoint_files(vllm_dir):
        rel = path.relative_to(vllm_dir.parent).as_posix()
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            unparsed.append(f"{rel}: {e.strerror or e}")
            continue
        interesting = bool(_INTERESTING.search(text))
        try:
            tree = ast.parse(text, filename=rel)
        except SyntaxError as e:
            unparsed.append(f"{rel}: {e.msg} at line {e.lineno}")
            continue
        walker = _Walker(_module_name(rel), rel)
        walker.walk(tree.body, (), None)
        walkers[walker.module] = walker
        if interesting and guard is None:
            found = find_guard(tree)
            if found:
                guard = {"file": rel, **found}
    gates = _Gates(walkers)
    routes: dict[tuple[str, tuple[str, ...]], dict] = {}
    for walker in walkers.values():
        for r in walker.routes:
            when = walker.route_gate(r, gates)
            key = (r["path"], tuple(r["methods"]))
            if key in routes:
                when = routes[key]["_when"] + when
            routes[key] = {"path": r["path"], "methods": r["methods"], "file": r["file"], "line": r["line"],
                           "_when": _minimal(when)}
    out = []
    for (path, _m), r in sorted(routes.items()):
        r["when"] = [sorted(alt) for alt in r.pop("_when")]
        out.append(r)
    # one entry per path: methods merged, the widest condition kept
    merged: dict[str, dict] = {}
    for r in out:
        m = merged.setdefault(r["path"], {**r, "methods": []})
        m["methods"] = sorted(set(m["methods"]) | set(r["methods"]))
        if r["when"] != m["when"]:
            m["when"] = [sorted(a) for a in _minimal([frozenset(a) for a in m["when"] + r["when"]])]
    return {"vllm_dir": str(vllm_dir), "files_read": len(walkers), "unparsed": unparsed, "guard": guard,
            "routes": [merged[p] for p in sorted(merged)]}


# -- its cache ---------------------------------------------------------------------------------
# Parsing the entrypoints (about 180 files in vLLM 0.26) takes 0.4-0.9 s, most of a doctor run;
# the surface changes only when vLLM is installed again, which rewrites its dist-info's RECORD.
# So the parsed surface is kept in the doctor's cache folder, one JSON file per vLLM folder,
# keyed by that RECORD's path, size and mtime, the doctor's version and this file's own bytes
# (a changed parser is a new key). No RECORD (a source tree, a stand-in): parsed every run.

SURFACE_CACHE_VERSION = 1


def surface_key(vllm_dir: Path) -> list | None:
    """What identifies the installed vLLM and the parser: None when there is no dist-info RECORD."""
    records = []
    for record in sorted(vllm_dir.parent.glob("vllm-*.dist-info/RECORD")):
        try:
            st = record.stat()
        except OSError:
            continue
        records.append([str(record), st.st_size, st.st_mtime_ns])
    if not records:
        return None
    import hashlib  # noqa: PLC0415 - only where a cache is looked up

    from .. import __version__  # noqa: PLC0415

    try:
        source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    except OSError:
        return None
    return [SURFACE_CACHE_VERSION, __version__, source, str(vllm_dir), records]


def cached_http_surface(vllm_dir: Path) -> dict:
    """parse_http_surface(vllm_dir), from the cache when its key matches (else parsed and stored)."""
    from ..cache import cache_dir, read_json, write_json  # noqa: PLC0415

    key = surface_key(vllm_dir)
    folder = cache_dir()
    path = None
    if key is not None and folder is not None:
        import hashlib  # noqa: PLC0415

        path = folder / f"http-surface-{hashlib.sha256(str(vllm_dir).encode()).hexdigest()[:32]}.json"
        got = read_json(path, key)
        if isinstance(got, dict) and isinstance(got.get("routes"), list) and "guard" in got:
            return got
    surface = parse_http_surface(vllm_dir)
    write_json(path, key, surface)
    return surface


def served_venv(env: Env, explicit: str | None = None) -> tuple[str, bool] | None:
    """(path, is a box path) of the vLLM that serves here: the unit's binary's venv, the manifest's,
    else --venv, else the doctor's usual target (VIRTUAL_ENV). What listens is the deployed
    service, whatever --venv says."""
    unit = read_unit(env)
    if unit and unit.get("argv"):
        home = env.venv_of_binary(unit["argv"][0])
        if home:
            return home, True
    try:
        manifest = read_manifest(env)
    except ValueError:
        manifest = None
    if isinstance(manifest, dict) and isinstance(manifest.get("venv"), str):
        return manifest["venv"], True
    found = find_venv(env, explicit)
    return (found[0], found[2]) if found else None


def http_surface_fact(env: Env, explicit: str | None = None) -> dict:
    """`explicit`: the doctor's --venv (collect() passes it, as to venv_facts)."""
    found = served_venv(env, explicit)
    if found is None:
        return {"vllm.http_surface": absent("no vLLM venv (no service, manifest, --venv or VIRTUAL_ENV)")}
    path, is_box = found
    venv = env.path(path) if is_box else Path(path)
    sps = site_packages_dirs(venv)
    try:
        surface = cached_http_surface(installed_vllm(sps))
    except FileNotFoundError as e:
        return {"vllm.http_surface": absent(str(e), path)}
    if surface["guard"] is None and not surface["routes"]:
        return {"vllm.http_surface": failed("no route and no key check found in the vLLM source", surface["vllm_dir"])}
    return {"vllm.http_surface": value(surface, surface["vllm_dir"])}


# http_surface_fact is not here: collect() runs it with the doctor's --venv (as venv_facts).
COLLECTORS = [
    (listen_fact, ("service.listen",)),
]
HTTP_SURFACE_KEYS = ("vllm.http_surface",)
