"""The three VMs of the repo's Vagrantfile, through pyinfra's @vagrant connector.

    vagrant up
    pyinfra -y inventories/vagrant.py deploys/gptoss.py

`@vagrant/<name>` asks `vagrant ssh-config` for the address, user and key of each VM, so
nothing here hard-codes them; the VMs must be running (`vagrant status`). The VMs have no
GPUs, so the family is set; see the Vagrantfile for what that means for vLLM. Data keys are
documented in inventories/cluster.py.
"""

VM_NAMES = ("gptoss-1", "gptoss-2", "gptoss-3")

vagrant_vms = (
    [f"@vagrant/{name}" for name in VM_NAMES],
    {
        "gptoss_stack": "vllm-0.20.2",
        "gptoss_gpu_family": "H100",
        "gptoss_model": "20b",
        "gptoss_api_key_file": "~/.config/gptoss/api-key",
        # Serve on the private network so the controller can reach each VM on 192.168.56.1x:8000.
        "gptoss_bind_address": "0.0.0.0",
        "_sudo": True,
    },
)
