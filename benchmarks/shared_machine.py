"""A run shares its machine: a sweep cell's wall on a quiet machine and next to a competing job, in one run.

For each setting it runs a sweep of small cells (vgg_small on digits, 2 epochs, one seed per cell, no export)
on one warm local worker twice: once quiet, once while a competing job runs that this script starts and
stops itself: a plain torch process (2 intra-op threads, libgomp's default wait policy, nothing of tle's)
training a small CNN in a loop, as another user's job on the same machine would. It prints the mean cell
wall (the runs' ``wall_seconds``, cells after the worker's first) quiet and loaded, and loaded ÷ quiet
(target <= 2 for torch on 2 cores, as Keras already is), plus the competitor's steps/s in each loaded phase.

Settings (``--settings``, comma-separated):

- ``torch``: tle as it is (``OMP_WAIT_POLICY=PASSIVE`` put in the worker's environment, ``tle.contract.threads``);
- ``torch-before``: the same with ``GOMP_SPINCOUNT=300000`` in the environment, i.e. libgomp's own default
  spin (what a worker ran with before tle set a wait policy; a user's value makes tle set none);
- ``torch-spin1000``: passive after a short spin (``GOMP_SPINCOUNT=1000``, ~10 us): faster quiet, slower loaded;
- ``torch-1thread``: ``OMP_NUM_THREADS=1`` on top of tle's settings (fewer threads instead of waiting passively);
- ``keras``: a Keras worker, for comparison (TensorFlow's Eigen pool spins briefly, then blocks).

With ``--runs`` it also times one whole ``tle run`` (a fresh process: imports, data, 2 epochs) per setting,
quiet and loaded. Phases alternate their order between ``--repeat``s; the load average before each phase
is printed, since other work on the machine makes a "quiet" phase less quiet.

    .venv/bin/python benchmarks/shared_machine.py [--cells 4] [--settings torch,torch-before,keras]
        [--repeat 1] [--runs] [--competitor-threads 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweep_overhead import sweep

from tle.contract.threads import WAIT_VARS

BACKEND = {"torch": "torch", "torch-before": "torch", "torch-spin1000": "torch", "torch-1thread": "torch", "keras": "keras"}
SETTING_ENV = {"torch": {}, "torch-before": {"GOMP_SPINCOUNT": "300000"},
               "torch-spin1000": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"},
               "torch-1thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, "keras": {}}

# Another user's job: plain torch, its own thread count, libgomp's defaults; prints steps/s when stopped.
COMPETITOR = """
import ctypes, signal, sys, time
try:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: ends with this script
except OSError:
    pass
import torch
torch.set_num_threads(int(sys.argv[1]))
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1),
                          torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
for _ in range(5):
    step()
steps, started = 0, time.perf_counter()
def stop(signum, frame):
    print(f"{steps / (time.perf_counter() - started):.1f}", flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    step(); steps += 1
"""


class Competitor:
    """The competing job, from ``start`` to ``stop`` (which returns its steps/s)."""

    def __init__(self, base_env: dict[str, str], threads: int):
        # Nothing of tle's or the user's thread settings: the other job runs with torch's defaults.
        env = {k: v for k, v in base_env.items() if k not in WAIT_VARS + ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        self.proc = subprocess.Popen([sys.executable, "-c", COMPETITOR, str(threads)], env=env,
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the competing job did not start")

    def stop(self) -> float:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return float(out.strip() or "nan")


def with_env(env: dict[str, str]) -> None:
    """This process's environment becomes ``env`` (a sweep starts its workers with it)."""
    os.environ.clear()
    os.environ.update(env)


def cells(tmp: Path, setting: str, args) -> list[float]:
    rows = sweep(tmp, BACKEND[setting], args.cells, 1, False)["rows"]
    walls = [r["wall"] for r in rows]
    return walls[1:] or walls  # the worker's first cell also pays imports the later ones do not


def one_run(tmp: Path, setting: str, env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "tle", "--quiet", "run", "--backend", BACKEND[setting], "--model", "vgg_small",
           "--dataset", "digits", "--image-size", "32", "--epochs", "2", "--batch-size", "32", "--no-export",
           "--tracking-uri", f"sqlite:///{tmp / 'runs.db'}", "--experiment", "shared-machine"]
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(tmp: Path, setting: str, loaded: bool, args, base: dict[str, str]) -> dict:
    env = {**base, **SETTING_ENV[setting]}
    with_env(env)
    load = os.getloadavg()[0]
    competitor = Competitor(base, args.competitor_threads) if loaded else None
    try:
        walls = cells(tmp / f"{setting}-{'loaded' if loaded else 'quiet'}", setting, args)
        run = one_run(tmp, setting, env) if args.runs else None
    finally:
        rate = competitor.stop() if competitor else None
        with_env(base)
    return {"cell": statistics.mean(walls), "walls": walls, "run": run, "load": load, "competitor": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4, help="cells per sweep (the first one is not counted)")
    parser.add_argument("--settings", default="torch,torch-before,keras", help=f"comma-separated: {', '.join(BACKEND)}")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--runs", action="store_true", help="also time one whole tle run per setting and phase")
    parser.add_argument("--competitor-threads", type=int, default=2)
    args = parser.parse_args()
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = set(settings) - set(BACKEND)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; known: {', '.join(BACKEND)}")
    base = dict(os.environ)
    print(f"{os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; the competitor: {args.competitor_threads}-thread torch")
    results: dict[tuple[str, bool], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for setting in settings:
                for loaded in ((False, True) if r % 2 == 0 else (True, False)):
                    out = measure(Path(tmp) / str(r), setting, loaded, args, base)
                    results.setdefault((setting, loaded), []).append(out)
                    print(f"  {setting:14s} {'loaded' if loaded else 'quiet ':6s} (load1 {out['load']:.2f}): cells "
                          f"{' '.join(f'{w:.2f}' for w in out['walls'])} s"
                          + (f"; tle run {out['run']:.1f} s" if out["run"] is not None else "")
                          + (f"; competitor {out['competitor']:.1f} steps/s" if loaded else ""), flush=True)
    print("\nmean cell wall (after each worker's first), quiet -> next to the competing job:")
    for setting in settings:
        quiet = statistics.mean(o["cell"] for o in results[(setting, False)])
        loaded = statistics.mean(o["cell"] for o in results[(setting, True)])
        line = f"  {setting:14s} {quiet:6.2f} s -> {loaded:6.2f} s  ratio {loaded / quiet:5.2f}"
        if args.runs:
            q = statistics.mean(o["run"] for o in results[(setting, False)])
            w = statistics.mean(o["run"] for o in results[(setting, True)])
            line += f"   tle run {q:5.1f} s -> {w:5.1f} s  ratio {w / q:5.2f}"
        print(line + ("   (target <= 2)" if BACKEND[setting] == "torch" else ""))
    if "torch" in settings and "torch-before" in settings:
        now = statistics.mean(o["cell"] for o in results[("torch", False)])
        before = statistics.mean(o["cell"] for o in results[("torch-before", False)])
        print(f"quiet torch cell, tle's setting / libgomp's default spin: {now / before:.2f}")


if __name__ == "__main__":
    main()
