"""The typer application, its consoles and the helpers every command shares."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tle.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer-learning experiments in any framework, tracked in MLflow, served with ONNX Runtime.")
# Result tables go to stdout at a readable width even when piped (rich would assume 80 columns).
out = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 160)))
err = Console(stderr=True)
STATE = {"debug": False, "quiet": False}

Opt = typer.Option

# Options that mean the same in every command that takes them (tle run's spelling).
ImageSizeOpt = Annotated[Optional[int], Opt("--image-size", help="resize images to this square size")]
ChannelsOpt = Annotated[Optional[int], Opt("--channels", help="1 or 3")]
DeviceOpt = Annotated[Optional[str], Opt("--device", help="auto | cpu | cuda | cuda:N")]
TrackingUriOpt = Annotated[Optional[str], Opt("--tracking-uri", help="MLflow tracking URI (default: a spec file's, "
                                                                     "else MLFLOW_TRACKING_URI, else ./mlflow.db)")]
RunNameOpt = Annotated[Optional[str], Opt("--run-name", help="MLflow run name")]
JsonOpt = Annotated[bool, Opt("--json", help="print the result as one JSON object on one line")]
QuietOpt = Annotated[bool, Opt("--quiet", "-q", help="no progress bars")]


@app.callback()
def _global(debug: Annotated[bool, Opt("--debug", help="show tracebacks")] = False,
            quiet: QuietOpt = False) -> None:
    STATE["debug"] = STATE["debug"] or debug
    STATE["quiet"] = STATE["quiet"] or quiet
    if not sys.stdout.isatty():  # piped: COLUMNS as it is now (a process may run several commands, e.g. tests)
        out.width = int(os.environ.get("COLUMNS", 160))


def parse_sets(items: list[str]) -> dict[str, object]:
    import yaml

    parsed: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not KEY=VALUE", "write e.g. --set train.weight_decay=1e-4")
        parsed[key.strip()] = yaml.safe_load(value) if value else value
    return parsed



def output_file(path: Path, flag: str, suffix: str | None = None) -> Path:
    """One rule for every file a command writes: missing folders are created, a folder or a file in the
    way is a user error (checked before any work is done)."""
    path = Path(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise UserError(f"{flag} {path} is not a {suffix} file", f"e.g. {flag} out{suffix}")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder", f"name a file in it, e.g. {path / ('out' + (suffix or ''))}")
    blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot write {flag} {path}: {blocker} is a file, not a folder", "choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder of {flag} {path} ({exc.strerror})", "choose another path") from None
    return path


def fmt(value, spec: str, suffix: str = "") -> str:
    if value is None:
        return "-"
    if value in (float("inf"), float("-inf")):
        return "never" if value < 0 else "inf"
    return f"{value:{spec}}{suffix}"
