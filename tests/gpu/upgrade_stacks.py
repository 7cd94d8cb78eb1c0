"""The two site stacks the GPU end to end's `upgrade` phase rolls to (tests/gpu/run_e2e.sh), as a
stack file (`gptoss_extra_stack_files`). The lent machine holds the wheels of one vLLM release only,
so both install exactly the wheels of the stack the box runs now:

- `<stack>-next`: the same wheels under a new name: a real upgrade (staged venv, switch, restart
  under gptoss-supervise, the health gate on real vLLM);
- `vllm-<next patch>-stale`: a row for the next patch release of vLLM whose requirement is a floor
  (`vllm>=<this release>`), installed from a wheelhouse that holds only this release's wheel. Its
  venv installs and its vLLM starts healthy, and the gate's version step fails (/version is not
  what the stack names), as when a mirror or wheelhouse lags the stack: the host must go back to
  `<stack>-next`.

    python3 tests/gpu/upgrade_stacks.py STACK OUT.toml     (PYTHONPATH=doctor)
"""

from __future__ import annotations

import json
import sys

from gptoss_doctor import knowledge
from packaging.version import Version


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string is a JSON string for these values


def row_text(stack, name: str, vllm: str, era: str, requirements: list[str]) -> str:
    keys = {
        "name": name, "era": era, "vllm": vllm, "torch": stack.torch, "torch_local": stack.torch_local,
        "triton_dist": stack.triton_dist, "triton": stack.triton, "cuda": stack.cuda, "rocm": stack.rocm,
        "python": stack.python, "min_driver": stack.min_driver, "min_glibc": stack.min_glibc,
        "index_strategy": stack.index_strategy, "prerelease": stack.prerelease, "torch_backend": stack.torch_backend,
        "requirements": requirements, "nvcc_requirement": stack.nvcc_requirement,
        "cuda_home_subdir": stack.cuda_home_subdir,
        "source": f"tests/gpu/upgrade_stacks.py: the wheels of {stack.name} ({stack.source.split()[0]})",
    }
    lines = ["[[stack]]"] + [f"{k} = {_toml_value(v)}" for k, v in keys.items() if v not in (None, "")]
    lines.append("indexes = [" + ", ".join(f'{{ name = {json.dumps(i.name)}, url = {json.dumps(i.url)} }}'
                                           for i in stack.indexes) + "]")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    name, out = argv
    stack = knowledge.load().stack(name)
    v = Version(stack.vllm)
    next_patch = f"{v.major}.{v.minor}.{v.micro + 1}"
    nxt, stale = f"{name}-next", f"vllm-{next_patch}-stale"
    floor = [f"vllm>={stack.vllm}" if r.split("=")[0].strip() == "vllm" else r for r in stack.requirements]
    text = ("# Written by tests/gpu/upgrade_stacks.py for the GPU end to end's upgrade phase.\n\n"
            + row_text(stack, nxt, stack.vllm, f"GPU e2e only: the wheels of {name} under a second name, to roll to",
                       list(stack.requirements))
            + "\n"
            + row_text(stack, stale, next_patch,
                       f"GPU e2e only: vLLM {next_patch} named, {name}'s wheels installed: the gate's version step must fail",
                       floor))
    with open(out, "w") as f:
        f.write(text)
    kb = knowledge.load(extra_stack_files=[out])  # both rows load, or this fails here
    kb.stack(nxt), kb.stack(stale)
    print(f"{out}: {nxt}, {stale}", file=sys.stderr)
    print(nxt, stale)  # for the script: read NEXT STALE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
