"""S2 on digits -> letters offline (README, "S2 — knowledge fusion (spiking)"): network A on all ten `digits`, B on
letters printed in EMNIST's format from A's conv1-conv2, S2's 50 R-STDP epochs, fused by index. The issue's own
bar for the real pair: B at least 0.70 on letters, the fused net above 0.5 and within 0.08 of bagging on both
tasks. Seed 0 measured B 0.842, fused 0.808 / 0.772, bagging 0.811 / 0.772 (study-sized: about 80 s)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import tle

ROOT = Path(__file__).resolve().parents[1]


def _run(env, *args):
    proc = tle("--quiet", "run", "--backend", "spyketorch", "--model", "mozafari", "--image-size", 28, "--channels", 1,
               "--batch-size", 32, "--epochs", 50, "--seed", 0, "--experiment", "s2-letters", *args, "--json",
               env=env, check_rc=0)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_digits_to_emnist_format_letters_meets_the_bar(tmp_path, store):
    letters = tmp_path / "letters"
    subprocess.run([sys.executable, str(ROOT / "examples" / "printed_letters.py"), str(letters)], check=True,
                   capture_output=True)
    env = {"MLFLOW_TRACKING_URI": store}
    a = _run(env, "--dataset", "digits")
    b = _run(env, "--dataset", f"folder:{letters}", "--strategy", "feature-extractor", "--weights",
             f"runs:/{a['run_id']}")
    assert b["test_acc"] >= 0.70, b
    proc = tle("--quiet", "fuse", a["run_id"], b["run_id"], "--align", "index", "--no-export", "--json", env=env,
               check_rc=0)
    acc = json.loads(proc.stdout)["accuracy"]
    for task in (0, 1):
        assert acc["fused"][task] > 0.5 and acc["bagging"][task] - acc["fused"][task] < 0.08, (task, acc)
