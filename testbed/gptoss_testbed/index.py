"""The testbed's package index: several named PEP 503 indexes under one loopback HTTP server.

    /                                  the index names
    /<index>/simple/                   the projects of one index
    /<index>/simple/<project>/         its files, with #sha256= and PEP 658 core-metadata hashes
    /<index>/files/<file>              a wheel (or <wheel>.metadata)
    GET  /_stats                       bytes and requests served, per index and per file (JSON)
    POST /_stats/reset                 zero the counters (the fleet-upgrade benchmark measures a run)

Every file served is also logged, one line each, to the log file the server is started with.
Run as its own process by `gptoss-testbed up`: `python -m gptoss_testbed.index --root DIR ...`.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename


class Stats:
    """Bytes served per index and per file; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.indexes: dict[str, dict[str, int]] = {}
            self.files: dict[str, dict[str, int]] = {}
            self.since = time.time()

    def add(self, index: str, name: str, nbytes: int) -> None:
        with self._lock:
            for table, key in ((self.indexes, index), (self.files, f"{index}/{name}")):
                row = table.setdefault(key, {"bytes": 0, "requests": 0})
                row["bytes"] += nbytes
                row["requests"] += 1

    def as_json(self) -> dict:
        with self._lock:
            return {"since": self.since, "total_bytes": sum(r["bytes"] for r in self.indexes.values()),
                    "indexes": json.loads(json.dumps(self.indexes)), "files": json.loads(json.dumps(self.files))}


class IndexTree:
    """The served tree: <root>/<index>/<wheel>; hashes computed once per file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._hashes: dict[Path, str] = {}

    def index_names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def projects(self, index: str) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {}
        d = self.root / index
        for whl in sorted(d.glob("*.whl")) if d.is_dir() else []:
            try:
                name, _v, _b, _t = parse_wheel_filename(whl.name)
            except InvalidWheelFilename:
                continue
            out.setdefault(str(name), []).append(whl)
        return out

    def sha256(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._hashes[path]

    @staticmethod
    def requires_python(whl: Path) -> str | None:
        meta = whl.with_name(whl.name + ".metadata")
        if meta.exists():
            for line in meta.read_text(errors="replace").splitlines():
                if line.startswith("Requires-Python:"):
                    return line.split(":", 1)[1].strip()
                if not line.strip():
                    break
        return None


def _page(title: str, links: list[str]) -> bytes:
    body = "\n".join(links)
    return (f"<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\">"
            f"<title>{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
            ).encode()


def make_handler(tree: IndexTree, stats: Stats, log_path: Path | None):
    log_lock = threading.Lock()

    def log_line(text: str) -> None:
        if log_path is None:
            return
        with log_lock, log_path.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "gptoss-testbed-index"

        def log_message(self, fmt: str, *args) -> None:
            pass  # our own log line per request, below

        def _send(self, code: int, body: bytes, ctype: str = "text/html; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _not_found(self, what: str) -> None:
            log_line(f"404 {self.command} {self.path}")
            self._send(404, f"not found: {what}\n".encode(), "text/plain")

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_POST(self) -> None:
            if self.path.rstrip("/") == "/_stats/reset":
                stats.reset()
                log_line("stats reset")
                return self._send(200, b'{"reset": true}\n', "application/json")
            self._not_found(self.path)

        def do_GET(self) -> None:
            parts = [unquote(p) for p in self.path.split("?", 1)[0].split("/") if p]
            if parts == ["_stats"]:
                return self._send(200, json.dumps(stats.as_json(), indent=1).encode(), "application/json")
            if not parts:
                names = tree.index_names()
                return self._send(200, _page("gptoss-testbed indexes",
                                             [f'<a href="/{quote(n)}/simple/">{html.escape(n)}</a><br>' for n in names]))
            index = parts[0]
            if index not in tree.index_names():
                return self._not_found(f"index {index!r}")
            if parts[1:] == ["simple"]:
                links = [f'<a href="/{quote(index)}/simple/{quote(p)}/">{html.escape(p)}</a><br>'
                         for p in sorted(tree.projects(index))]
                return self._send(200, _page(f"{index}: simple index", links))
            if len(parts) == 3 and parts[1] == "simple":
                files = tree.projects(index).get(str(canonicalize_name(parts[2])))
                if not files:
                    return self._not_found(f"project {parts[2]!r} in index {index!r}")
                return self._send(200, _page(f"Links for {parts[2]}", [self._link(index, f) for f in files]))
            if len(parts) == 3 and parts[1] == "files":
                path = tree.root / index / parts[2]
                if "/" in parts[2] or not path.is_file():
                    return self._not_found(f"file {parts[2]!r} in index {index!r}")
                data = path.read_bytes()
                if self.command == "GET":
                    stats.add(index, parts[2], len(data))
                    log_line(f"200 GET {index} {parts[2]} bytes={len(data)}")
                return self._send(200, data, "application/octet-stream")
            return self._not_found(self.path)

        def _link(self, index: str, whl: Path) -> str:
            attrs = ""
            rp = tree.requires_python(whl)
            if rp:
                attrs += f' data-requires-python="{html.escape(rp)}"'
            meta = whl.with_name(whl.name + ".metadata")
            if meta.exists():
                h = tree.sha256(meta)
                attrs += f' data-core-metadata="sha256={h}" data-dist-info-metadata="sha256={h}"'
            href = f"/{quote(index)}/files/{quote(whl.name)}#sha256={tree.sha256(whl)}"
            return f'<a href="{href}"{attrs}>{html.escape(whl.name)}</a><br>'

    return Handler


class IndexServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # uv opens dozens of connections at once; the default backlog (5) drops them


def make_server(root: Path, host: str, port: int, log_path: Path | None = None) -> IndexServer:
    return IndexServer((host, port), make_handler(IndexTree(root), Stats(), log_path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gptoss_testbed.index")
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8700)
    ap.add_argument("--log", type=Path)
    a = ap.parse_args(argv)
    try:
        server = make_server(a.root, a.host, a.port, a.log)
    except OSError as e:
        print(f"gptoss-testbed index: cannot listen on {a.host}:{a.port}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"serving {a.root} on http://{a.host}:{a.port}/", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
