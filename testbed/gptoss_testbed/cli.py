"""gptoss-testbed: the local fleet (booted Debian hosts under systemd-nspawn + a loopback package index).

    gptoss-testbed up [--hosts N] [--lb]   boot N hosts (default 3), the index, and with --lb a
                                      balancer host (inventory group gptoss_lb); idempotent
    gptoss-testbed down               stop exactly what `up` started; discard the hosts
    gptoss-testbed status [--json]    hosts, ssh key, API key, stacks, broken stack (exit 1 unless all runs)
    gptoss-testbed env [--json]       index URLs per name, stats URL, files the inventory reads
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import fleet
from .errors import TestbedError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gptoss-testbed", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="boot the local fleet (idempotent)")
    p_up.add_argument("--hosts", type=int, default=fleet.DEFAULT_HOSTS, help="how many hosts (default 3)")
    p_up.add_argument("--first-address", default=fleet.DEFAULT_FIRST_ADDRESS,
                      help="loopback address of the first host (default 127.0.0.11)")
    p_up.add_argument("--index-port", type=int, default=fleet.DEFAULT_INDEX_PORT,
                      help=f"port of the package index on {fleet.DEFAULT_INDEX_HOST} (default {fleet.DEFAULT_INDEX_PORT})")
    p_up.add_argument("--lb", action="store_true",
                      help="also boot a balancer host (gptoss-lb, the next address) for the gptoss_lb group")
    sub.add_parser("down", help="stop everything `up` started and discard the hosts")
    for name, text in (("status", "hosts, ssh key, API key, stacks, broken stack"),
                       ("env", "index URLs per name, stats URL, files the inventory reads")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")
    return ap


def status_lines(out: dict) -> list[str]:
    return ([f"{h['name']}  {h['address']}" for h in out["hosts"]]
            + ([f"{out['lb']['name']}  {out['lb']['address']}  balancer on port {out['lb']['port']}"] if out.get("lb") else [])
            + [f"ssh key: {out['ssh_key']}",
               "stacks: " + ", ".join(f"{s['name']} ({s['vllm']})" for s in out["stacks"]),
               f"broken stack: {out['broken_stack']}"])


def env_lines(out: dict) -> list[str]:
    return [f"{k}: {v}" for k, v in out.items()]


# The read-only commands: what they report, and how it reads without --json.
REPORTS = {"status": (fleet.status_json, status_lines), "env": (fleet.env_json, env_lines)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in REPORTS:
            report, lines = REPORTS[args.command]
            out = report(fleet.running_state())
            print(json.dumps(out, indent=1) if args.json else "\n".join(lines(out)))
        else:
            t0 = time.monotonic()
            if args.command == "up":
                fleet.up(args.hosts, args.first_address, index_port=args.index_port, lb=args.lb)
            else:
                fleet.down()
            print(f"done in {time.monotonic() - t0:.1f} s")
    except TestbedError as e:
        print(f"gptoss-testbed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gptoss-testbed: interrupted; run `gptoss-testbed down` to clean up", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
