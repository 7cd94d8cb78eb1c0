"""A STAND-IN for the Hugging Face Hub (or a site's mirror of it): a loopback HTTP server that
answers the calls the REAL huggingface_hub client (2.4.0, read from its source) makes for
`snapshot_download`, serving a tiny fake repo. Nothing here is Hugging Face's code or data.

    GET  /api/models/<repo>[/revision/<rev>]            model info: id, sha, siblings
    GET  /api/models/<repo>/tree/<rev>[/<dir>]?recursive  the file listing snapshot_download filters
    HEAD /<repo>/resolve/<rev>/<file>                    X-Repo-Commit, ETag (X-Linked-Etag and
                                                         X-Linked-Size for LFS files), Content-Length
    GET  /<repo>/resolve/<rev>/<file>                    the bytes

With a token set, a request without it answers 401 (X-Error-Code: GatedRepo).
Unknown repos, revisions and files answer 404 with the X-Error-Code the Hub sends, so the client
raises its own RepositoryNotFoundError / RevisionNotFoundError / EntryNotFoundError.

`gpt_oss_20b_standin()` builds the fake `openai/gpt-oss-20b`: the real config.json (the
repo's copy of shared/data/gpt-oss-20b-config.json), small real-format safetensors shards with their index, tokenizer and chat-template
stand-ins, and the original/ and metal/ folders a deploy must NOT download.

Run by hand: `python tests/hfmirror.py --port 8790` (prints the endpoint, serves until ^C).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_JSON = REPO_ROOT / "tests" / "fixtures" / "gpu" / "gpt-oss-20b" / "config.json"  # a copy of shared/data's
LFS_SUFFIXES = (".safetensors", ".bin")  # stored in git-lfs on the Hub: sha256 etags, X-Linked-* headers


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    sha: str = ""

    def __post_init__(self) -> None:
        if not self.sha:  # a commit id that changes with the content, 40 hex like git's
            h = hashlib.sha1()
            for path in sorted(self.files):
                h.update(path.encode() + b"\0" + self.files[path])
            self.sha = h.hexdigest()

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def git_oid(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def etag(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest() if self.is_lfs(path) else self.git_oid(path)

    def tree(self, under: str = "", recursive: bool = False) -> list[dict]:
        """Entries as the Hub lists them: files (with lfs info) and directories."""
        prefix = f"{under.strip('/')}/" if under.strip("/") else ""
        entries: dict[str, dict] = {}
        for path in sorted(self.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                                "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entry = {"type": "file", "oid": self.git_oid(path), "size": len(self.files[path]), "path": path}
                if self.is_lfs(path):
                    entry["lfs"] = {"oid": self.etag(path), "size": len(self.files[path]), "pointerSize": 134}
                entries[path] = entry
        return [entries[k] for k in sorted(entries)]


def safetensors_bytes(tensors: dict[str, bytes]) -> bytes:
    """A real safetensors file of U8 tensors: 8-byte little-endian header size, JSON header, data."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, data in tensors.items():
        header[name] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(tensors.values())


def _filler(seed: str, n: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def gpt_oss_20b_standin(weights_bytes: int = 2 * 1024 * 1024, config_json: Path = CONFIG_JSON) -> Repo:
    """The fake openai/gpt-oss-20b: the top level vLLM loads, plus original/ and metal/ (the other
    weight formats of the real repo, each as large as the top-level weights)."""
    config = config_json.read_bytes()
    half = weights_bytes // 2
    shards = {
        "model-00000-of-00001.safetensors": {"model.embed_tokens.weight": _filler("a", half)},
        "model-00001-of-00001.safetensors": {"lm_head.weight": _filler("b", weights_bytes - half)},
    }
    files: dict[str, bytes] = {name: safetensors_bytes(t) for name, t in shards.items()}
    index = {"metadata": {"total_size": weights_bytes},
             "weight_map": {t: name for name, ts in shards.items() for t in ts}}
    files.update({
        "config.json": config,
        "model.safetensors.index.json": json.dumps(index, indent=2).encode(),
        "generation_config.json": json.dumps({"bos_token_id": 199998, "eos_token_id": [200002, 199999]}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "stand_in": True, "model": {"type": "BPE"}}).encode(),
        "tokenizer_config.json": json.dumps({"model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast"}).encode(),
        "special_tokens_map.json": json.dumps({"eos_token": "<|return|>", "pad_token": "<|endoftext|>"}).encode(),
        "chat_template.jinja": b"{# stand-in chat template #}{% for m in messages %}{{ m['content'] }}{% endfor %}\n",
        "README.md": b"# gpt-oss-20b (testbed stand-in: not the real model)\n",
        "original/config.json": config,
        "original/dtypes.json": b'{"embedding.weight": "BF16"}\n',
        "original/model.safetensors": safetensors_bytes({"embedding.weight": _filler("o", weights_bytes)}),
        "metal/model.bin": _filler("m", weights_bytes),
    })
    return Repo("openai/gpt-oss-20b", files)


@dataclass
class RequestLog:
    """Every request seen, as (method, path): what the tests assert on."""

    entries: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Files whose GET answers 403 (their HEAD still succeeds): a download that breaks half-way.
    refused: set[str] = field(default_factory=set)
    # Set: every request must carry `Authorization: Bearer <token>` (a gated repo or a private mirror).
    token: str | None = None

    def add(self, method: str, path: str) -> None:
        with self.lock:
            self.entries.append((method, path))

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()

    def snapshot(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.entries)

    def resolved(self) -> list[tuple[str, str]]:
        """(method, file in the repo) of every /resolve/ request: HEADs (metadata) and GETs (bytes)."""
        return [(m, unquote(p.split("/resolve/", 1)[1].split("/", 1)[1])) for m, p in self.snapshot()
                if "/resolve/" in p]

    def downloads(self) -> list[str]:
        """Files whose bytes were asked for (GET on /resolve/)."""
        return [f for m, f in self.resolved() if m == "GET"]


def make_handler(repos: dict[str, Repo], log: RequestLog):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "gptoss-hfmirror-standin"

        def log_message(self, fmt: str, *args) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json", headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: int, error_code: str, message: str, headers: dict | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(code, body, headers={"X-Error-Code": error_code, "X-Error-Message": message, **(headers or {})})

        def _repo(self, repo_id: str) -> Repo | None:
            repo = repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return repo

        def _revision_ok(self, repo: Repo, rev: str) -> bool:
            if rev in ("main", repo.sha):
                return True
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return False

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            log.add(self.command, url.path)
            if log.token and self.headers.get("Authorization") != f"Bearer {log.token}":
                return self._error(401, "GatedRepo", "Access to this repo is restricted: log in with a token")
            parts = [unquote(p) for p in url.path.split("/") if p]
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self._api(parts[2] + "/" + parts[3], parts[4:], parse_qs(url.query))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
            self._error(404, "EntryNotFound", f"no route for {url.path}")

        def _api(self, repo_id: str, rest: list[str], query: dict) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if not rest or (rest[0] == "revision" and len(rest) == 2):
                if rest and not self._revision_ok(repo, rest[1]):
                    return
                info = {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha, "private": False,
                        "gated": False, "disabled": False, "tags": ["stand-in"],
                        "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
                return self._send(200, json.dumps(info).encode())
            if rest[0] == "tree" and len(rest) >= 2:
                if not self._revision_ok(repo, rest[1]):
                    return
                recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
                return self._send(200, json.dumps(repo.tree("/".join(rest[2:]), recursive)).encode())
            self._error(404, "EntryNotFound", f"no API route {'/'.join(rest)}")

        def _resolve(self, repo_id: str, rev: str, path: str) -> None:
            repo = self._repo(repo_id)
            if repo is None or not self._revision_ok(repo, rev):
                return
            commit = {"X-Repo-Commit": repo.sha}
            if path not in repo.files:
                return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", commit)
            if self.command == "GET" and path in log.refused:
                return self._error(403, "Forbidden", f"{path}: access refused by the mirror", commit)
            data = repo.files[path]
            etag = f'"{repo.etag(path)}"'
            headers = {**commit, "ETag": etag, "Accept-Ranges": "bytes"}
            if repo.is_lfs(path):
                headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(data))})
            self._send(200, data, "application/octet-stream", headers)

    return Handler


class MirrorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def serve(repos: list[Repo], host: str = "127.0.0.1", port: int = 0) -> tuple[MirrorServer, RequestLog, str]:
    """Start the mirror in a thread; returns (server, request log, endpoint URL). server.shutdown() stops it."""
    log = RequestLog()
    server = MirrorServer((host, port), make_handler({r.repo_id: r for r in repos}, log))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, log, f"http://{host}:{server.server_address[1]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/hfmirror.py", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--weights-mib", type=float, default=2.0)
    a = ap.parse_args(argv)
    try:
        server, _log, url = serve([gpt_oss_20b_standin(int(a.weights_mib * 1024 * 1024))], a.host, a.port)
    except OSError as e:
        print(f"hfmirror: cannot listen on {a.host}:{a.port}: {e.strerror}")
        return 1
    print(f"HF_ENDPOINT={url}  (openai/gpt-oss-20b stand-in)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
