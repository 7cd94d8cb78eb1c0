"""An example cluster: one group per GPU family. Copy it, change the hosts, then

    pyinfra inventories/cluster.py deploys/gptoss.py            # shows the changes, asks
    pyinfra -y inventories/cluster.py deploys/gptoss.py         # applies them

Every host's data is validated before any host is changed: a bad value stops the whole run
with one line naming the host, the key, the value and the fix.

Data keys (all optional unless marked; host data wins over group data, group over `all`; this
list is generated from the deploy's key table, deploys/gptoss_deploy/keys.py):

  gptoss_stack                   REQUIRED. A stack name from the knowledge: every vLLM release
                                 (doctor/gptoss_doctor/knowledge/releases.toml, e.g. "vllm-0.34.0"),
                                 or a build of stacks.toml ("vllm-0.34.0-cu129",
                                 "vllm-0.34.0-rocm"): fixes vLLM, torch, Triton, CUDA, the package
                                 indexes, the uv index strategy / prerelease / torch backend. The
                                 stack venv runs on the host's python3 where it is in the stack's
                                 Python range, else on uv's managed CPython (gptoss_python_mirror).
  gptoss_python_mirror           Where the host's python3 misses the stack's Python range (the
                                 launch stack needs 3.12; Debian 12 has 3.11), the stack venv is
                                 built on uv's managed CPython in /opt/gptoss/python, downloaded
                                 from python-build-standalone's GitHub releases, or from this mirror
                                 of them (UV_PYTHON_INSTALL_MIRROR; http(s) or file://). Needed when
                                 air-gapped (gptoss_wheelhouse).
  gptoss_python_downloads_json   A downloads list in uv's format (UV_PYTHON_DOWNLOADS_JSON_URL) for
                                 a site's own CPython archives and their sha256.
  gptoss_extra_stack_files       Paths (on the controller) of extra stack TOML files: your own
                                 pinned stacks, same fields as stacks.toml.
  gptoss_gpu_family              Detected from nvidia-smi / ROCm; set it only for hosts without GPUs
                                 (building an image), e.g. "H100". Must match if GPUs exist.
  gptoss_install_driver          False (default): an NVIDIA driver older than the stack needs stops
                                 the run with the fix. True: install the server driver branch
                                 (Ubuntu), then you reboot and run again.
  gptoss_model                   "20b" (default) or "120b" (openai/gpt-oss-20b / -120b).
  gptoss_tensor_parallel_size    Default 1. Must divide the model's 64 attention heads and be at
                                 most the number of GPUs on the host.
  gptoss_gpu_memory_utilization  In (0, 1]; default 0.9 (keep < 0.95 for 120b at TP2 on H100).
  gptoss_max_model_len           Optional context cap (<= 131072).
  gptoss_port                    Default 8000.
  gptoss_bind_address            Default 127.0.0.1 (put an authenticating proxy in front); the
                                 host's own address or 0.0.0.0 to serve the network.
  gptoss_front                   "auto" (default: where gptoss_bind_address is not loopback), true
                                 or false. A front on the host (HAProxy from the distribution's
                                 packages) answers on gptoss_bind_address:gptoss_port with only
                                 /v1/chat/completions, /v1/completions, /v1/responses, /v1/models
                                 (with the key, checked by the front too), /health and /version;
                                 vLLM itself then listens on gptoss_vllm_address:gptoss_vllm_port.
                                 False leaves vLLM's own port facing the network, with routes its
                                 key check does not cover (the doctor says so).
  gptoss_vllm_address            Where vLLM itself listens behind the front (default 127.0.0.1):
                                 loopback, or an address only the front and the balancer reach.
  gptoss_vllm_port               vLLM's own port behind the front (default gptoss_port + 1).
  gptoss_metrics_allow           Addresses or networks (CIDR) of the metrics scrapers: the front
                                 serves /metrics to them only (default: to nobody).
  gptoss_api_key_file            REQUIRED. A file ON THE CONTROLLER holding the API key (chmod 600;
                                 world-readable files are refused). It reaches the host as
                                 /etc/gptoss/api-key (0640 root:gptoss) and vLLM through an
                                 EnvironmentFile: never in argv, logs or world-readable files.
  gptoss_index_mirrors           {index-name: url} for mirrors / air-gapped sites. Index names come
                                 from the stack ("pypi" is the default index; the doctor's own
                                 dependencies come from the "pypi" mirror too).
  gptoss_uv_source               "controller" (default: push the controller's uv binary), "index"
                                 (the same uv version's wheel from the "pypi" index or its mirror)
                                 or a URL of a uv release tarball
                                 (uv-<arch>-unknown-linux-gnu.tar.gz); "index" or a URL when
                                 controller and host architectures differ.
  gptoss_cuda_home               "auto" (default: the stack's pip CUDA toolkit inside its venv where
                                 it has one, else /usr/local/cuda if new enough), "pip", "system"
                                 (/usr/local/cuda, must be >= the stack's CUDA), "none" or a path.
                                 The same CUDA_HOME is used to install and to serve.
  gptoss_hf_home                 Hugging Face cache, default /var/lib/gptoss/hf.
  gptoss_predownload             True: download the weights during the deploy (free space is checked
                                 first against what is still missing) and serve with
                                 HF_HUB_OFFLINE=1. Only what vLLM loads (config, tokenizer, chat
                                 template, safetensors): never original/ or metal/.
  gptoss_hf_endpoint             The Hugging Face Hub or a site mirror of it (http(s) URL), default
                                 https://huggingface.co; given to the pre-download and to the
                                 service as HF_ENDPOINT.
  gptoss_hf_token_file           A file on the controller (chmod 600) holding a Hugging Face token,
                                 for gated repos or mirrors; copied to <hf_home>/token (0600,
                                 service user), never in argv, env files or logs.
  gptoss_tiktoken_url            Base URL (or file:// dir on the controller) holding
                                 o200k_base.tiktoken and cl100k_base.tiktoken; default OpenAI's
                                 public bucket; "" skips (then harmony downloads at first request).
  gptoss_tool_servers            ["demo"] (installs gpt-oss, --tool-server demo) and/or MCP servers
                                 as "host:port"; each must be reachable from the host.
  gptoss_extra_serve_args        Extra `vllm serve` arguments, e.g. ["--max-num-seqs", "128"].
  gptoss_health_timeout_s        How long the health gate waits for /health (default 900 s).
  gptoss_doctor_gate             True (default): `gptoss-doctor` runs after the deploy and an error
                                 finding fails that host.
  gptoss_wheelhouse              Air-gapped hosts: a directory of wheels ON THE HOST; the stack (and
                                 the doctor) install with uv --offline --no-index from it.
  gptoss_wheelhouse_no_deps      True: install exactly the wheelhouse's wheels (--no-deps), for a
                                 curated closure; the doctor gate judges the result.
  gptoss_base_python             An existing interpreter on the host whose torch build equals the
                                 stack's pin (vendor PyTorch images): the stack venv is layered on
                                 it (--system-site-packages). Checked before any change.
  gptoss_service_manager         "auto" (default: systemd where it runs), "systemd", or "supervisor"
                                 (gptoss-supervise runs the same unit file on hosts without systemd:
                                 containers, some GPU VMs).
  gptoss_model_path              A model folder already on the host (absolute path), served under
                                 the HF id of gptoss_model; the service then runs offline.
  gptoss_jit_cache               A tar archive ON THE CONTROLLER of a warmed host's JIT caches
                                 (Triton, FlashInfer, CUDA, vLLM; same GPU model and stack), made
                                 there with `cd /var/lib/gptoss && tar -czf /tmp/jit.tgz $(ls -d
                                 .triton .cache cache .nv 2>/dev/null)`. Unpacked as the service
                                 user once per archive: the first start skips the kernel builds (208
                                 s -> 60 s to ready on an H200 with --enforce-eager).
  gptoss_upgrade_batch           Upgrade: hosts restarted together after the canary, a count or a
                                 percentage of the fleet (default 1).
  gptoss_keep_stacks             Upgrade: stacks kept on each host, the new one and the rollback one
                                 first (default 2).
  gptoss_lb_drain_cmd            Upgrade: a shell command run on the controller to take a host out
                                 of the load balancer ({host} and {address} substituted); needs
                                 gptoss_lb_restore_cmd.
  gptoss_lb_restore_cmd          Upgrade: the command that puts the host back in (same
                                 substitutions).
  gptoss_download_once           Upgrade: True (default) fetches the new stack's wheels once on the
                                 controller and pushes them; False: every host fetches from its
                                 indexes itself.
  gptoss_lb_drain_timeout_s      Upgrade behind a gptoss_lb balancer: how long a drained host's
                                 requests in flight may take to finish before its restart (default
                                 300 s).
  gptoss_lb_port                 Balancer hosts (group gptoss_lb): the one endpoint's port (default
                                 8000).
  gptoss_lb_bind_address         Balancer hosts: the address the endpoint listens on (default
                                 0.0.0.0).
  gptoss_lb_tls_cert             Balancer hosts: a PEM file ON THE CONTROLLER with the site's
                                 certificate (chain) and its private key (chmod 600); the endpoint
                                 then speaks TLS only. Copied to /etc/haproxy/gptoss.pem (0640
                                 root:haproxy).
  gptoss_lb_check_interval_ms    Balancer hosts: how often each backend's /health is checked
                                 (default 1000 ms); one failed check takes it out of rotation.

Connection keys are pyinfra's own (ssh_user, ssh_key, ssh_port, _sudo, ...).

One endpoint for the fleet: serve on each host's own address (gptoss_bind_address; its front then
answers there and vLLM moves behind it) and add a group named gptoss_lb; its hosts get HAProxy
with every other host of this inventory as a server, and deploys/upgrade.py drains through it:

    gptoss_lb = (["lb-01.example.net"], {"ssh_user": "ubuntu", "_sudo": True, "gptoss_lb_port": 443,
                                         "gptoss_lb_tls_cert": "~/.config/gptoss/site.pem"})
"""

_SHARED = {
    "gptoss_stack": "vllm-0.34.0",
    "gptoss_model": "120b",
    "gptoss_api_key_file": "~/.config/gptoss/api-key",
    "gptoss_bind_address": "127.0.0.1",
    "gptoss_port": 8000,
    "ssh_user": "ubuntu",
    "_sudo": True,
}

# HGX H100 8-GPU boxes (NVSwitch: the fabric manager is installed, matched to the driver).
h100 = (
    ["h100-01.example.net", "h100-02.example.net"],
    {**_SHARED, "gptoss_tensor_parallel_size": 2, "gptoss_gpu_memory_utilization": 0.9},
)

# H200 boxes, weights pre-downloaded so the service starts without network.
h200 = (
    ["h200-01.example.net"],
    {**_SHARED, "gptoss_tensor_parallel_size": 1, "gptoss_predownload": True},
)

# B200: the knowledge's recipe supplies the Blackwell env and flags.
b200 = (
    ["b200-01.example.net"],
    {**_SHARED, "gptoss_tensor_parallel_size": 1},
)

# AMD MI300X behind an air-gapped mirror (every URL overridden).
mi300x = (
    ["mi300x-01.example.net"],
    {
        **_SHARED,
        "gptoss_stack": "vllm-0.34.0-rocm",
        "gptoss_tensor_parallel_size": 8,
        "gptoss_index_mirrors": {"pypi": "https://mirror.example.net/pypi/simple",
                                 "vllm-rocm": "https://mirror.example.net/vllm-rocm/simple",
                                 "pytorch-rocm7.0": "https://mirror.example.net/pytorch/rocm7.0"},
        "gptoss_uv_source": "https://mirror.example.net/uv/uv-x86_64-unknown-linux-gnu.tar.gz",
        "gptoss_tiktoken_url": "https://mirror.example.net/tiktoken/",
        "gptoss_hf_endpoint": "https://mirror.example.net/huggingface",
        "gptoss_predownload": True,
    },
)
