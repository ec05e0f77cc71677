"""The whole zoo, torch <-> Keras: logits parity and conversion seconds for every model both backends offer.

For each model: the torch backend's model with random weights and BatchNorm
statistics -> portable arrays -> the Keras model of the same name
(``tle_keras.portable.from_portable``), max |Δlogits| on a fixed batch; the
Keras model's own random weights -> ``to_portable`` -> torch, max |Δlogits|;
parameter counts per block equal; ``tle plan --json`` equal at 32 px (all
names, ``--no-plans`` to skip); the seconds of ``from_portable`` and
``to_portable`` (ResNet-50 and DenseNet-161: the issue's "seconds, not
minutes"). TensorFlow and torch run in separate processes
(``tests/zoo_parity.py``). Prints one row per model; exit 1 when a model
misses 1e-4.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/keras_zoo_parity.py [--models resnet50,densenet161] [--no-plans]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

import zoo_parity as Z  # noqa: E402

TOL = 1e-4


def cases_for(names):
    from tle_keras import registry

    cases = []
    for name in names:
        size = 64 if name == "alexnet" else 32
        cases.append((name, size, "linear" if registry.family(name) in ("vgg", "alexnet") else "original"))
    # The original classifiers of VGG (7x7 adaptive pool, classifier.0/3/6) and AlexNet (6x6, classifier.1/4/6).
    cases += [(n, 64 if n == "alexnet" else 32, "original") for n in ("vgg16", "alexnet") if n in names]
    return cases


def _drop(knet) -> None:
    import gc

    import keras

    del knet
    keras.backend.clear_session()  # a zoo of models in one process: free each before the next
    gc.collect()


def main() -> int:
    from tle_keras import portable, registry

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join([*registry.TORCHVISION, *registry.SMALL]))
    parser.add_argument("--no-plans", action="store_true")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    cases = cases_for(names)
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        keras_logits, seconds = {}, {}
        for seed, case in enumerate(cases):
            knet = Z.keras_net(*case)
            t = time.perf_counter()
            portable.to_portable(knet)
            seconds[case] = {"to": time.perf_counter() - t}
            keras_logits[case] = Z.write_keras(case, knet, out, seed)
            _drop(knet)
        t = time.perf_counter()
        Z.run_torch(out, cases=cases, back=cases, plans=[] if args.no_plans else names, pools=False, timeout=3600)
        torch_seconds = time.perf_counter() - t
        plans = {} if args.no_plans else json.loads((out / "plans.json").read_text())
        for case in cases:
            arrays, x, want, torch_counts = Z.read_torch(case, out)
            knet = Z.keras_net(*case)
            t = time.perf_counter()
            portable.from_portable(knet, arrays, "torch", keep_head=True)
            seconds[case]["from"] = time.perf_counter() - t
            got = np.asarray(knet.net(x, training=False))
            forward = float(np.abs(got - want).max())
            back = float(np.abs(np.load(out / f"{Z.case_id(case)}.torch_logits.npy") - keras_logits[case]).max())
            counts_ok = Z.keras_counts(knet) == torch_counts
            plan_ok = None
            if plans and case[0] in plans and case == next(c for c in cases if c[0] == case[0]):
                from typer.testing import CliRunner

                from tle.cli import app

                result = CliRunner().invoke(app, Z.plan_args(case[0], "keras"))
                plan_ok = result.exit_code == 0 and (
                    json.loads(result.stdout.strip().splitlines()[-1])["stages"] == plans[case[0]]["stages"])
            ok = forward <= TOL and back <= TOL and counts_ok and plan_ok is not False
            failed |= not ok
            rows.append((Z.case_id(case), forward, back, float(np.abs(want).max()), counts_ok, plan_ok,
                         seconds[case]["from"], seconds[case]["to"], sum(a.size for a in arrays.values()), ok))
            print(f"{rows[-1][0]:28s} torch->keras {forward:.1e}  keras->torch {back:.1e}  max|logit| {rows[-1][3]:6.2f}"
                  f"  counts {'=' if counts_ok else '!='}  plan {'-' if plan_ok is None else '=' if plan_ok else '!='}"
                  f"  from_portable {rows[-1][6]:.2f}s  to_portable {rows[-1][7]:.2f}s  "
                  f"({rows[-1][8] / 1e6:.1f}M values){'' if ok else '  FAIL'}", flush=True)
            _drop(knet)
    print(f"torch side (build, random weights, logits, load, plans; one process): {torch_seconds:.0f}s")
    print(f"worst torch->keras {max(r[1] for r in rows):.1e}, keras->torch {max(r[2] for r in rows):.1e} "
          f"over {len(rows)} cases; {'all within' if not failed else 'NOT all within'} {TOL:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
