"""The chaos run as a child process inside a netns lab's client namespace (see runner.run_in_lab).

    ip netns exec rkv<tag>-client python -m raftkv.chaos.worker SPEC.json

SPEC.json holds `ChaosOptions` with `lab_tag` set. The exit code is the judgement's (0 pass,
1 violation, 3 inconclusive) or 4 when the run could not be carried out.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from raftkv.chaos.runner import EXIT_SETUP_FAILED, ChaosError, ChaosOptions, run


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so `finally` blocks stop the nodes and heal the network


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    opts = ChaosOptions.from_json(Path(argv[0]).read_text())
    try:
        judgement = run(opts)
    except ChaosError as e:
        print(f"chaos: cannot run: {e}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    print(judgement.summary())
    return judgement.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
