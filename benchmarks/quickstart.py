"""The newcomer's first run: ``clustersim run`` (the built-in quickstart, trace and plot written)
end to end, against one million raw simpy timeouts, on the same machine.

Each pair runs the quickstart in a fresh interpreter (imports included, as a user waits for
them) and then a fresh interpreter that times 1,000,000 ``env.timeout`` in one process (the
interpreter start excluded); the ratio of each pair is reported and their median, so that load
from other processes cancels out. Goal: the quickstart within 5x.

    python benchmarks/quickstart.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TIMEOUTS = """
import time, simpy
env = simpy.Environment()
def ticker(n):
    for _ in range(n):
        yield env.timeout(1e-6)
env.process(ticker(1_000_000))
start = time.perf_counter()
env.run()
print(time.perf_counter() - start)
"""


def quickstart_s() -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "clustersim.cli", "run", "--out", out], check=True,
                       stdout=subprocess.DEVNULL, env=os.environ.copy())
        wall = time.perf_counter() - start
        written = set(os.listdir(out))
        if not {"trace.json", "timeline.png"} <= written:
            raise RuntimeError(f"the quickstart wrote {sorted(written)}, not its trace and plot")
        return wall


def timeouts_s() -> float:
    result = subprocess.run([sys.executable, "-c", TIMEOUTS], check=True, capture_output=True,
                            text=True)
    return float(result.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    ratios = []
    for _ in range(args.pairs):
        ours, raw = quickstart_s(), timeouts_s()
        ratios.append(ours / raw)
        print(f"quickstart {ours:.2f} s, 1M simpy timeouts {raw:.2f} s: {ours / raw:.2f}x", flush=True)
    print(f"median ratio {statistics.median(ratios):.2f}x over {args.pairs} alternated pairs "
          f"(goal <= 5x)")


if __name__ == "__main__":
    main()
