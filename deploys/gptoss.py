"""Deploy gpt-oss on vLLM: `pyinfra inventories/cluster.py deploys/gptoss.py`.

Every host's data is validated into one frozen config first (a bad value stops the run with
one line, before anything changes on any host); then one @deploy unit per concern; then the
health gate, the front (where the host serves beyond loopback) and the doctor gate. Hosts of the
`gptoss_lb` group get the balancer instead. A second run changes nothing.
"""

from pyinfra import host

from gptoss_deploy import balancer, doctor, gpu, jit_cache, manifest, model, plan, python_env, service, tools
from gptoss_deploy import host as host_unit

if balancer.is_balancer():  # a host of the gptoss_lb group: HAProxy before every serving host
    balancer.apply(*balancer.balancer_config(host, host.inventory))
else:
    cfg, kb = plan.host_configs().deploy  # the same builder as deploys/upgrade.py's
    doctor.build_wheel()  # on the controller, before any host is touched (cached by source hash)

    host_unit.apply(cfg)
    gpu.apply(cfg)
    installed, switched = python_env.apply(cfg)
    gpu.check_cuda_home(cfg)
    model_changes = model.apply(cfg, kb)
    tools.apply(cfg)
    jit_cache.apply(cfg)
    doctor.apply(cfg)
    deployed = manifest.apply(cfg)
    service.apply(
        cfg,
        inputs_changed=lambda: installed.did_change() or switched.did_change() or deployed.did_change()
        or any(op.did_change() for op in model_changes),
    )
    if cfg.front:  # vLLM moved behind it by the service unit above
        balancer.apply_front(cfg.front, cfg.api_key_file)
    doctor.gate(cfg)
