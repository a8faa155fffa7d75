"""The newcomer's first run: ``clustersim run`` (the built-in quickstart, trace and plot written)
end to end, against one million raw simpy timeouts, on the same machine.

Each pair runs the quickstart in a fresh interpreter (imports included, as a user waits for
them) and then a fresh interpreter that times 1,000,000 ``env.timeout`` in one process (the
interpreter start excluded); the ratio of each pair is reported and their median and range, so
that load from other processes cancels out. Wall time is what a user waits for; the ratio of
CPU times (the quickstart's process, the timeouts' loop) is printed beside it, steadier on a
loaded machine. Goal: the quickstart within 5x.

    python benchmarks/quickstart.py [--pairs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
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
start, cpu = time.perf_counter(), time.process_time()
env.run()
print(time.perf_counter() - start, time.process_time() - cpu)
"""


def quickstart_s(env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s of the child) of ``clustersim run`` in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "clustersim.cli", "run", "--out", out], check=True,
                       stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        written = set(os.listdir(out))
        if not {"trace.json", "timeline.png"} <= written:
            raise RuntimeError(f"the quickstart wrote {sorted(written)}, not its trace and plot")
        return wall, cpu


def timeouts_s() -> tuple[float, float]:
    """(wall s, CPU s) of one million simpy timeouts, timed inside a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", TIMEOUTS], check=True, capture_output=True,
                            text=True)
    wall, cpu = result.stdout.split()
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    run_pairs(args.pairs, os.environ.copy())


def run_pairs(pairs: int, env: dict[str, str]) -> None:
    walls, cpus = [], []
    for _ in range(pairs):
        ours, raw = quickstart_s(env), timeouts_s()
        walls.append(ours[0] / raw[0])
        cpus.append(ours[1] / raw[1])
        print(f"quickstart {ours[0]:.2f} s (CPU {ours[1]:.2f} s), 1M simpy timeouts {raw[0]:.2f} s "
              f"(CPU {raw[1]:.2f} s): {walls[-1]:.2f}x wall, {cpus[-1]:.2f}x CPU", flush=True)
    print(f"median ratio {statistics.median(walls):.2f}x wall (range {min(walls):.2f}-"
          f"{max(walls):.2f}), {statistics.median(cpus):.2f}x CPU (range {min(cpus):.2f}-"
          f"{max(cpus):.2f}) over {pairs} alternated pairs (goal <= 5x)")


if __name__ == "__main__":
    main()
