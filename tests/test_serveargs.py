"""serveargs: one parser of `vllm serve` command lines (used by the doctor and the deploys)."""

from __future__ import annotations

import pytest

from gptoss_doctor import serveargs
from gptoss_doctor.serveargs import ServeArgsError, parse


def test_vllm_serve_with_positional_model_and_defaults():
    got = parse(["/opt/gptoss/current/bin/vllm", "serve", "openai/gpt-oss-120b"])
    assert got["model"] == "openai/gpt-oss-120b"
    assert got["host"] == serveargs.DEFAULT_HOST  # vLLM binds every interface without --host
    assert got["port"] == 8000
    assert got["tensor_parallel_size"] == 1
    assert got["gpu_memory_utilization"] is None
    assert got["api_key_set"] is False
    assert got["flags"] == {}


def test_flag_spellings_are_canonical():
    got = parse(
        [
            "vllm", "serve", "openai/gpt-oss-20b",
            "--tensor_parallel_size=4", "--gpu-memory-utilization", "0.9",
            "--host", "127.0.0.1", "--port=8010", "--async-scheduling", "--max-model-len", "4096",
        ]
    )
    assert got["tensor_parallel_size"] == 4
    assert got["gpu_memory_utilization"] == 0.9
    assert (got["host"], got["port"]) == ("127.0.0.1", 8010)
    assert got["flags"]["async-scheduling"] == "True"
    assert got["flags"]["max-model-len"] == "4096"
    assert "tensor-parallel-size" in got["flags"]


def test_short_aliases():
    got = parse(["vllm", "serve", "m", "-tp", "8", "-O3", "-cc.pass_config.fuse_rope_kvcache=True", "-O.level=2"])
    assert got["tensor_parallel_size"] == 8
    assert got["flags"]["optimization-level"] == "3"
    assert got["flags"]["compilation-config.pass_config.fuse_rope_kvcache"] == "True"
    assert got["flags"]["compilation-config.level"] == "2"


def test_boolean_flag_before_the_model():
    got = parse(["vllm", "serve", "--enforce-eager", "openai/gpt-oss-20b", "--port", "9000"])
    assert got["model"] == "openai/gpt-oss-20b"
    assert got["flags"]["enforce-eager"] == "True"
    assert got["port"] == 9000


def test_model_flag_and_old_api_server_module():
    got = parse(["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "openai/gpt-oss-20b", "-tp", "2"])
    assert got["model"] == "openai/gpt-oss-20b"
    assert got["tensor_parallel_size"] == 2


def test_api_key_is_noted_never_kept():
    got = parse(["vllm", "serve", "m", "--api-key", "sk-secret-value-123"])
    assert got["api_key_set"] is True
    assert "sk-secret" not in repr(got)


def test_api_key_from_the_environment():
    assert parse(["vllm", "serve", "m"], {"VLLM_API_KEY": "abc"})["api_key_set"] is True
    assert parse(["vllm", "serve", "m"], {"VLLM_API_KEY": ""})["api_key_set"] is False


def test_negative_number_is_a_value_not_a_flag():
    got = parse(["vllm", "serve", "m", "--seed", "-1"])
    assert got["flags"]["seed"] == "-1"


@pytest.mark.parametrize(
    "argv, named",
    [
        (["vllm", "serve", "m", "--port", "http"], "--port 'http'"),
        (["vllm", "serve", "m", "-tp", "two"], "--tensor-parallel-size 'two'"),
        (["vllm", "serve", "m", "--gpu-memory-utilization", "high"], "--gpu-memory-utilization 'high'"),
    ],
)
def test_bad_numbers_name_the_flag_and_value(argv, named):
    with pytest.raises(ServeArgsError) as e:
        parse(argv)
    assert named in str(e.value)


def test_not_a_vllm_server():
    with pytest.raises(ServeArgsError, match="not a vLLM server"):
        parse(["/usr/bin/python3", "-m", "http.server"])
