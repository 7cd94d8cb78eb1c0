"""STAND-IN for vLLM's OpenAI-compatible server (the real one needs a GPU). Standard library only.

What it answers is what the project relies on: `vllm serve MODEL [flags]`, the routes real vLLM
0.26.0 serves for gpt-oss, guarded as real vLLM guards them (entrypoints/openai/routes.py: only
the era's path prefixes need the key; `/invocations` answers without it), vLLM-shaped log lines, and rejection of
flags, env vars and attention backends as THIS version of vLLM would. Which names are valid in
this version was baked into `_standin.json` at build time from the project's knowledge data.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA = json.loads((Path(__file__).with_name("_standin.json")).read_text())

# Not a VLLM_* name on purpose: a VLLM_* name would itself be an "unknown vLLM environment variable".
STARTUP_SECONDS = float(os.environ.get("GPTOSS_STANDIN_STARTUP_S", "1.0"))


# ---------------------------------------------------------------------------------------------
# Logging in vLLM's shape
# ---------------------------------------------------------------------------------------------

def log(level: str, where: str, msg: str) -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    prefix = f"(APIServer pid={os.getpid()}) " if DATA["log_style"] == "new" else ""
    print(f"{prefix}{level} {stamp} [{where}] {msg}", flush=True)


def uvicorn(msg: str) -> None:
    print(f"INFO:     {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

def normalize_argv(argv: list[str]) -> list[str]:
    """vLLM accepts --max_model_len as --max-model-len, and -cc.x=y / --compilation-config.x=y."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            key, eq, val = arg.partition("=")
            key = key.replace("_", "-")
            base, dot, _sub = key.partition(".")
            if dot and base in DATA["flags"]:  # --attention-config.backend=X: the base flag decides
                arg = f"{base}={_sub}{eq}{val}" if eq else base
            else:
                arg = key + eq + val
        elif arg.startswith("-cc.") and "--compilation-config" in DATA["flags"]:
            arg = "--compilation-config=" + arg[4:]
        out.append(arg)
    return out


def config_file_args(path: str) -> list[str]:
    """The flags of a `--config` YAML file: flat `key: value` lines (what the recipes use)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        print(f"vllm: error: --config {path}: {e.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    args: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].rstrip()
        if not line.strip() or ":" not in line:
            continue
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip().strip("'\"")
        if val.lower() == "true":
            args.append(f"--{key}")
        elif val.lower() != "false":
            args += [f"--{key}", val]
    return args


def build_parser(prog: str, positional_model: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, add_help=True, allow_abbrev=False)
    if positional_model:
        parser.add_argument("model_tag", nargs="?", default=None)
    for flag, kind in DATA["flags"].items():
        names = [flag] + [a for a, target in DATA["aliases"].items() if target == flag]
        dest = flag.lstrip("-").replace("-", "_")
        if kind == "bool":
            parser.add_argument(*names, dest=dest, action="store_true", default=None)
        elif kind == "list":
            parser.add_argument(*names, dest=dest, nargs="+", default=None)
        else:
            parser.add_argument(*names, dest=dest, default=None)
    return parser


def parse_args(argv: list[str], prog: str, positional_model: bool) -> argparse.Namespace:
    argv = normalize_argv(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 < len(argv):
            argv = normalize_argv(config_file_args(argv[i + 1])) + argv
    # The real CLI is invoked as `vllm serve`, but argparse errors read "vllm: error: ...".
    parser = build_parser("vllm" if positional_model else prog, positional_model)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Validation, as this version does it
# ---------------------------------------------------------------------------------------------

def check_env(args: argparse.Namespace) -> None:
    known = set(DATA["env_vars"])
    for name in sorted(os.environ):
        if not name.startswith("VLLM_"):
            continue
        if name in DATA["deprecated_env_vars"]:
            repl = DATA["deprecated_env_vars"][name]
            log("WARNING", "envs.py:1180", f"{name} is deprecated and will be removed in a future release."
                + (f" Use {repl} instead." if repl else ""))
        if name not in known and DATA["validate_environ"]:
            if getattr(args, "fail_on_environ_validation", None):
                log("ERROR", "interface.py:612", f"Unknown vLLM environment variable detected: {name}")
                raise SystemExit(1)
            log("WARNING", "interface.py:612", f"Unknown vLLM environment variable detected: {name}")


def check_flags(argv: list[str], args: argparse.Namespace) -> None:
    for flag, repl in DATA["deprecated_flags"].items():
        if " " in flag:
            continue  # a deprecated value: below
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            log("WARNING", "arg_utils.py:1890", f"{flag} is deprecated and will be removed in a future release."
                + (f" Use {repl} instead." if repl else ""))
    for flag, values in DATA["bad_values"].items():
        given = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if given is None:
            continue
        given_text = " ".join(given) if isinstance(given, list) else str(given)
        for value, how in values.items():
            if value not in given_text:
                continue
            if how == "deprecated":
                repl = DATA["deprecated_flags"].get(f"{flag} {value}")
                log("WARNING", "compilation.py:520", f"{value} is deprecated and will be removed in a future release."
                    + (f" Use {repl} instead." if repl else ""))
            elif flag == "--compilation-config":  # vLLM's config dataclasses forbid unknown keys
                print(f"pydantic_core._pydantic_core.ValidationError: 1 validation error for CompilationConfig\n"
                      f"{value}\n  Extra inputs are not permitted [type=extra_forbidden, input_value=True, "
                      f"input_type=bool]", file=sys.stderr, flush=True)
                raise SystemExit(1)
            else:
                print(f"usage: vllm serve [model_tag] [options]\nvllm: error: argument {flag}: invalid choice: "
                      f"'{value}'", file=sys.stderr, flush=True)
                raise SystemExit(2)


def chosen_backend(args: argparse.Namespace) -> str | None:
    flag = getattr(args, "attention_backend", None)
    if flag:
        return flag
    config = getattr(args, "attention_config", None)
    if config and config.startswith("backend="):
        return config.split("=", 1)[1]
    if "VLLM_ATTENTION_BACKEND" in DATA["env_vars"]:
        return os.environ.get("VLLM_ATTENTION_BACKEND") or None
    return None


def check_backend(args: argparse.Namespace) -> None:
    name = chosen_backend(args)
    if name is None or name in DATA["attention_backends"]:
        return
    print("Traceback (most recent call last):\n"
          '  File "vllm/attention/selector.py", line 142, in get_attn_backend\n'
          "    backend = AttentionBackendEnum[backend_name]", file=sys.stderr)
    print(f"ValueError: Unknown attention backend: '{name}'. Valid options are: "
          f"{', '.join(DATA['attention_backends'])}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def check_torch() -> None:
    """vLLM's compiled ops are tied to one torch build; another torch fails at import."""
    try:
        import torch  # the stand-in torch: no GPU code
    except ImportError as e:
        print(f"ModuleNotFoundError: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    want = DATA["torch_public"]
    got = str(getattr(torch, "__version__", "")).split("+")[0]
    if want and got != want:
        print(f"ImportError: {Path(__file__).parent}/_C.abi3.so: undefined symbol: "
              "_ZN5torch3jit17parseSchemaOrNameERKSsb", file=sys.stderr, flush=True)
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    daemon_threads = True
    app: object  # the app wrapped in its middlewares: scope -> Response


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *a) -> None:  # uvicorn's access-log shape, below
        pass

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        uvicorn(f'{self.client_address[0]}:{self.client_address[1]} - "{self.command} {self.path} HTTP/1.1" '
                f"{code} {HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else ''}")

    def _dispatch(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        scope = {"type": "http", "method": self.command, "path": self.path.split("?", 1)[0], "root_path": "",
                 "headers": self.headers, "body": self.rfile.read(length) if length else b""}
        response = self.server.app(scope)
        if hasattr(response.body, "__next__"):  # a stream: chunked, each event written as it comes
            self._send_stream(response.status, response.body, response.content_type or "text/event-stream")
            return
        data, content_type = response.encoded()
        self._send(response.status, data, content_type)

    def _send_stream(self, code: int, events, content_type: str) -> None:
        self.send_response(code)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for data in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        uvicorn(f'{self.client_address[0]}:{self.client_address[1]} - "{self.command} {self.path} HTTP/1.1" {code} OK')

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch


# ---------------------------------------------------------------------------------------------
# Serve
# ---------------------------------------------------------------------------------------------

def serve(argv: list[str], prog: str, positional_model: bool) -> int:
    args = parse_args(argv, prog, positional_model)
    model = getattr(args, "model_tag", None) or args.model or "openai/gpt-oss-20b"
    names = args.served_model_name or [model]
    host = args.host or "0.0.0.0"
    port = int(args.port or 8000)
    api_key = args.api_key or os.environ.get("VLLM_API_KEY") or None

    if DATA["log_style"] == "new":
        log("INFO", "utils.py:253", f"vLLM server version {DATA['version']}")
    else:
        log("INFO", "api_server.py:1805", f"vLLM API server version {DATA['version']}")
    shown = {k: ("<redacted>" if k == "api_key" else v) for k, v in vars(args).items() if v is not None}
    log("INFO", "utils.py:326", f"non-default args: {shown}")
    check_flags(normalize_argv(argv), args)
    check_env(args)
    check_backend(args)
    check_torch()

    try:
        server = Server((host, port), Handler)
    except OSError as e:
        print(f"OSError: [Errno {e.errno}] {e.strerror}: ('{host}', {port})", file=sys.stderr, flush=True)
        return 1
    from vllm.entrypoints.openai.routes import build_app

    app = build_app(args, api_key, DATA["auth_module"])
    state = app.state
    state.version, state.model_names, state.model_root = DATA["version"], names, model
    state.max_model_len = int(args.max_model_len or 131072)
    state.healthy, state.completions = False, 0
    server.app = app.asgi()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    log("INFO", "model.py:1672", "Resolved architecture: GptOssForCausalLM")
    log("INFO", "gpu_model_runner.py:2007", f"Starting to load model {model}...")
    # The socket is bound before the engine is up (as in vLLM): connections succeed, /health does not.
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait(STARTUP_SECONDS)
    if DATA["broken"]:
        log("ERROR", "core.py:708", "EngineCore failed to start.")
        log("ERROR", "core_client.py:564", "Engine core initialization failed. See root cause above. "
            "Failed core proc(s): {'EngineCore_DP0': 1}")
    else:
        state.healthy = True
        log("INFO", "gpu_model_runner.py:2059", "Model loading took 12.9 GiB and 3.1 seconds")
        if DATA["log_style"] == "new":
            log("INFO", "api_server.py:1912", f"Starting vLLM server on http://{host}:{port}")
        else:
            log("INFO", "api_server.py:1857", f"Starting vLLM API server 0 on http://{host}:{port}")
        log("INFO", "launcher.py:29", "Available routes are:")
        for route in app.routes:
            log("INFO", "launcher.py:37", f"Route: {route.path}, Methods: {', '.join(route.methods)}")
        uvicorn(f"Started server process [{os.getpid()}]")
        uvicorn("Waiting for application startup.")
        uvicorn("Application startup complete.")
    stop.wait()
    server.shutdown()
    uvicorn("Shutting down")
    uvicorn(f"Finished server process [{os.getpid()}]")
    return 0
