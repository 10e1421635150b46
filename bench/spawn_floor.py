"""The floor: N sequential `sh -c COMMAND` spawns from one Python process, output captured.

No job engine can run a shell command faster than spawning it, so this is the baseline the
engine's per-job overhead is judged against.  It runs as its own fresh process (started by
bench/engine_run.py) so its CPU and memory are measured the same way as the engines' processes.
Prints one JSON line with the same keys as the submitters.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spawns", type=int, required=True)
    parser.add_argument("--command", default="echo hello world")
    parser.add_argument("--expect", default="hello world")
    args = parser.parse_args()

    ok = failed = wrong_output = 0
    started = time.time()
    for _ in range(args.spawns):
        done = subprocess.run(["/bin/sh", "-c", args.command], check=False, stdin=subprocess.DEVNULL,
                              capture_output=True)
        if done.returncode != 0:
            failed += 1
        elif done.stdout.decode().strip() != args.expect:
            wrong_output += 1
        else:
            ok += 1
    finished = time.time()
    print(json.dumps({"started": started, "submitted": started, "finished": finished,
                      "ok": ok, "failed": failed, "wrong_output": wrong_output}))
    return 0 if failed == 0 and wrong_output == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
