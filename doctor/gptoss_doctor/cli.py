"""gptoss-doctor command line (placeholder until the CLI lands)."""
import sys


def main(argv=None) -> int:
    print("gptoss-doctor: under construction", file=sys.stderr)
    return 2
