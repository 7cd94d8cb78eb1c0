"""Print the official recipe's serve flags for the deployed GPU family and vLLM (run_e2e.sh's
`compare` phase), from the project's knowledge, run with the deployed doctor's interpreter.

    /opt/gptoss/doctor/bin/python tests/gpu/recipe_flags.py /etc/gptoss/manifest.json
"""

from __future__ import annotations

import json
import sys

from gptoss_doctor import knowledge


def main(manifest_path: str) -> int:
    manifest = json.load(open(manifest_path))
    kb = knowledge.load()
    recipe = kb.recipe(manifest["gpu_family"], manifest["versions"]["vllm"])
    if recipe is None:
        print(f"recipe_flags: no recipe for {manifest['gpu_family']} at vLLM {manifest['versions']['vllm']}", file=sys.stderr)
        return 1
    print(" ".join(recipe.serve_flags))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
