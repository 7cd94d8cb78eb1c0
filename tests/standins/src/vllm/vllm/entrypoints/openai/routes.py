"""STAND-IN for the routes real vLLM 0.26.0 registers for a generative model (gpt-oss), and build_app.

Registered as vLLM registers them (APIRouter decorators, a /metrics mount, FastAPI's default docs),
and guarded the same way: the key check is the era's path-prefix middleware (see `_standin.json`
"auth_module"), so what answers WITHOUT the key is what answered on real vLLM 0.26.0 (measured on
an H200, vllm-project/vllm#58144): `/invocations` (a full completion), `/tokenize`, `/detokenize`,
`/generative_scoring`, `/scale_elastic_ep`, `/is_scaling_elastic_ep`, `/metrics`, `/load`, `/ping`,
`/health`, `/version`, `/openapi.json`, `/docs`, `/redoc`. Answers are canned: no model runs here.
Every stand-in version serves this one route set; the key check alone follows the version's era.
"""

from __future__ import annotations

import importlib
import json
import os
import time

from vllm._standin_http import APIRouter, FastAPI, Request, Response

router = APIRouter()

_WORDS = "the quick stand-in model answers every prompt with the same few words".split()
# Seconds per generated token (a real H200 takes ~10 ms per token of gpt-oss-20b): a request is in
# flight for a while, as on a real server, so draining and killing mid-request mean something.
TOKEN_S = float(os.environ.get("GPTOSS_STANDIN_TOKEN_S", "0.01"))


def _engine_dead() -> Response:
    return Response(503, {"error": "EngineDeadError: EngineCore encountered an issue."})


def _body(req: Request) -> dict | Response:
    try:
        body = req.json()
    except ValueError:
        return Response(400, {"error": {"message": "request body is not JSON", "type": "BadRequestError", "code": 400}})
    return body if isinstance(body, dict) else Response(400, {"error": {"message": "expected a JSON object",
                                                                       "type": "BadRequestError", "code": 400}})


def _generate(req: Request, chat: bool) -> Response:
    state = req.state
    if not state.healthy:
        return _engine_dead()
    body = _body(req)
    if isinstance(body, Response):
        return body
    model = body.get("model")
    if model not in state.model_names:
        return Response(404, {"error": {"message": f"The model `{model}` does not exist.",
                                        "type": "NotFoundError", "param": "model", "code": 404}})
    n = max(1, min(int(body.get("max_tokens") or 16), len(_WORDS)))
    text = " " + " ".join(_WORDS[:n])
    prompt_tokens = len(str(body.get("prompt", body.get("messages", ""))).split())
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
    state.completions += 1
    now = int(time.time())
    if body.get("stream"):
        return Response(200, _stream(chat, model, n, now, usage, body), "text/event-stream; charset=utf-8")
    time.sleep(TOKEN_S * n)
    if chat:
        return Response(200, {"id": f"chatcmpl-{os.getpid()}-{now}", "object": "chat.completion", "created": now,
                              "model": model, "usage": usage,
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": text.strip()},
                                           "finish_reason": "length"}]})
    return Response(200, {"id": f"cmpl-{os.getpid()}-{int(time.time() * 1000)}", "object": "text_completion",
                          "created": now, "model": model, "usage": usage,
                          "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}]})


def _stream(chat: bool, model: str, n: int, now: int, usage: dict, body: dict):
    """Server-sent events as vLLM sends them: one `data: {json}` chunk per token (the last with its
    finish_reason), the usage chunk when stream_options.include_usage, then `data: [DONE]`."""
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{os.getpid()}-{int(time.time() * 1000)}"
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict | None, extra: dict | None = None) -> bytes:
        out = {"id": rid, "object": obj, "created": now, "model": model,
               "choices": [] if choice is None else [{"index": 0, **choice}], **(extra or {})}
        return b"data: " + json.dumps(out).encode() + b"\n\n"

    if chat:
        yield chunk({"delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None})
    for i, word in enumerate(_WORDS[:n]):
        time.sleep(TOKEN_S)
        done = "length" if i == n - 1 else None
        piece = " " + word if (i or not chat) else word
        yield chunk({"delta": {"content": piece}, "logprobs": None, "finish_reason": done} if chat else
                    {"text": piece, "logprobs": None, "finish_reason": done, "stop_reason": None})
    if (body.get("stream_options") or {}).get("include_usage"):
        yield chunk(None, {"usage": usage})
    yield b"data: [DONE]\n\n"


# -- health and load (vllm/entrypoints/serve/instrumentator/...) --------------------------------

@router.get("/health")
def health(req: Request):
    return Response(200, "") if req.state.healthy else _engine_dead()


@router.get("/version")
def show_version(req: Request):
    return {"version": req.state.version}


@router.get("/load")
def get_server_load_metrics(req: Request):
    return {"server_load": 0} if req.state.healthy else _engine_dead()


def metrics_app(req: Request):
    """A few of vLLM's Prometheus series, so scrapers find the names."""
    name = req.state.model_names[0]
    series = (("vllm:num_requests_running", 0), ("vllm:num_requests_waiting", 0),
              ("vllm:request_success_total", req.state.completions))
    return Response(200, "".join(f'{s}{{model_name="{name}"}} {v}\n' for s, v in series),
                    "text/plain; version=0.0.4; charset=utf-8")


router.mount("/metrics", metrics_app)


# -- the OpenAI API (vllm/entrypoints/openai/*/api_router.py) ------------------------------------

@router.get("/v1/models")
def show_available_models(req: Request):
    if not req.state.healthy:
        return _engine_dead()
    created = int(time.time())
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": req.state.model_root,
         "parent": None, "max_model_len": req.state.max_model_len} for name in req.state.model_names]}


@router.post("/v1/completions")
def create_completion(req: Request):
    return _generate(req, chat=False)


@router.post("/v1/chat/completions")
def create_chat_completion(req: Request):
    return _generate(req, chat=True)


@router.post("/inference/v1/generate")
def generate(req: Request):
    return _generate(req, chat=False)


# -- SageMaker (vllm/entrypoints/sagemaker/api_router.py): mounted unconditionally ---------------

@router.get("/ping")
@router.post("/ping")
def ping(req: Request):
    return health(req)


@router.post("/invocations")
def invocations(req: Request):
    """Dispatches on the body's shape, as vLLM does: messages -> chat, prompt -> completion."""
    body = _body(req)
    if isinstance(body, Response):
        return body
    return _generate(req, chat="messages" in body)


# -- tokenizer and scoring (vllm/entrypoints/serve/tokenize, openai/generative_scoring) ----------

@router.post("/tokenize")
def tokenize(req: Request):
    body = _body(req)
    if isinstance(body, Response):
        return body
    text = str(body.get("prompt", body.get("messages", "")))
    tokens = [sum(map(ord, w)) % 201088 for w in text.split()]
    return {"count": len(tokens), "max_model_len": req.state.max_model_len, "tokens": tokens}


@router.post("/detokenize")
def detokenize(req: Request):
    body = _body(req)
    if isinstance(body, Response):
        return body
    return {"prompt": " ".join(f"<{t}>" for t in body.get("tokens") or [])}


@router.post("/generative_scoring")
def generative_scoring(req: Request):
    if not req.state.healthy:
        return _engine_dead()
    body = _body(req)
    if isinstance(body, Response):
        return body
    items = body.get("items") or [""]
    return {"object": "list", "model": body.get("model"),
            "data": [{"index": i, "object": "score", "score": 0.5} for i, _ in enumerate(items)]}


# -- elastic expert parallelism (vllm/entrypoints/serve/elastic_ep/api_router.py) ----------------

@router.post("/scale_elastic_ep")
def scale_elastic_ep(req: Request):
    body = _body(req)
    if isinstance(body, Response):
        return body
    if "new_data_parallel_size" not in body:
        return Response(400, {"error": "new_data_parallel_size is required"})
    return Response(400, {"error": "elastic EP is not enabled on this server"})


@router.post("/is_scaling_elastic_ep")
def is_scaling_elastic_ep(req: Request):
    return {"is_scaling_elastic_ep": False}


def build_app(args, api_key: str | None, auth_module: str) -> FastAPI:
    """The app; `auth_module` is where this version's era keeps the key check (build.py writes it)."""
    if getattr(args, "disable_fastapi_docs", None):
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    else:
        app = FastAPI()
    app.include_router(router)
    if api_key:  # as in vLLM: the middleware exists only when a key is set
        app.add_middleware(importlib.import_module(auth_module).AuthenticationMiddleware, tokens=[api_key])
    return app
