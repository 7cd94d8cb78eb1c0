"""Rolling upgrade of a serving fleet: `pyinfra INV deploys/upgrade.py --data gptoss_stack=NEW`.

1. Prepare (no host changes): every host's config for NEW and for the stack it runs now (its
   rollback), validated like the deploy's; the wheels of NEW resolved and downloaded once on
   the controller (gptoss_deploy.wheelhouse).
2. Stage, on every host in parallel, the service untouched: wheels pushed, NEW's venv built
   (complete only with its marker), NEW's and the rollback stack's service files staged.
   A host that fails here, or cannot be reached, stops the upgrade before any restart.
3. Roll (gptoss_deploy.rollout): the canary, then batches of `gptoss_upgrade_batch` hosts
   (a count or a percentage, default 1): drain, switch, restart, health gate, restore; a failed
   gate rolls that host back and stops the run (exit 1) with the doctor's reading of the host.
   Stacks beyond `gptoss_keep_stacks` (default 2: NEW and the rollback) are pruned.

Behind a balancer (hosts of the `gptoss_lb` group, in the same inventory): each host is drained
through HAProxy's runtime socket (`set server gptoss/HOST state drain`, its sessions waited down
to 0 or gptoss_lb_drain_timeout_s) and set ready only after its gate passes.

Settings (inventory data, documented with every key in inventories/cluster.py): gptoss_upgrade_batch,
gptoss_keep_stacks, gptoss_lb_drain_cmd and gptoss_lb_restore_cmd (run on the controller;
{host}/{address} substituted), gptoss_download_once (default True; False: every host fetches from
its indexes itself). GPTOSS_UPGRADE_REPORT=PATH (environment) writes the run's report as JSON.
The configs come from the deploy's own builder (plan.host_configs), facts included: a host
without systemd is restarted through gptoss-supervise, an air-gapped one installs from its wheelhouse.
Run it without --serial/--no-wait: the batch loop needs pyinfra's default op-by-op execution.
"""

from pyinfra import host

from gptoss_deploy import balancer, plan, python_env, rollout, wheelhouse
from gptoss_deploy.facts import HostFacts

# gptoss_lb hosts are not upgraded: the roll drains each serving host through them (rollout.py)
if not balancer.is_balancer():
    built = plan.host_configs(upgrade=True)
    new, old, settings, state = built.cfg, built.rollback, built.settings, built.state

    python_env.uv_binary(name="uv binary", cfg=new)
    python_env.install_managed_python(new)
    # An air-gapped site (the deploy's own wheelhouse) never reaches upstream: the deploy's install.
    if settings.download_once and not new.airgap:
        hf = host.get_fact(HostFacts)  # the venv's Python: the host's python3, or uv's managed CPython
        py = new.managed_python.minor if new.managed_python else hf.get("python_version") or "3"
        wh = wheelhouse.build(new, py, hf.get("arch") or "x86_64")
        wheelhouse.push(name=f"stage: wheels of {new.stack} from the controller", cfg=new, wh=wh)
        wheelhouse.staged_venv(name=f"stage: venv {new.stack} (from the wheelhouse)", cfg=new, wh=wh)
    else:
        python_env.stack_venv(name=f"stage: venv {new.stack}", cfg=new)
    rollout.stage_files(
        name="stage: service files of both stacks",
        new=new, old=old, record_rollback=rollout.stack_of(state["current"]) != new.stack,
    )
    rollout.roll(
        name=f"roll to {new.stack}: drain, switch, restart, health gate (canary, then batches)",
        new=new, old=old, st=settings, installed=state["stacks"],
    )
