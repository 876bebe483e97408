"""What a command may write over: the --out of `envtune convert` and `envtune export`.

An output folder these commands write gets a marker file (`.envtune-output.json`: command, source, time).
Before anything is loaded, `check_replaceable` refuses an --out that is the input, lies inside it or holds
it, and an existing --out that is not an earlier output of the same command (a folder with other files, a
plain file, another command's output), unless --overwrite. An empty folder is fine.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from envtune_jax.config import ConfigError

MARKER_FILE = ".envtune-output.json"


def check_replaceable(out: Path, inputs: dict[str, Path], command: str, overwrite: bool) -> None:
    """Raises ConfigError unless writing `command`'s output to `out` destroys nothing the user did not ask
    to replace. `inputs`: flag -> path the command reads."""
    target = out.resolve()
    for name, path in inputs.items():
        source = Path(path).resolve()
        if target == source:
            raise ConfigError(f"--out {out} is the {name} folder it reads: the output would replace the input")
        if target.is_relative_to(source):
            raise ConfigError(f"--out {out} lies inside the {name} folder {path}: choose a folder outside it")
        if source.is_relative_to(target):
            raise ConfigError(f"--out {out} holds the {name} folder {path}: replacing it would delete the input")
    if not out.exists() and not out.is_symlink():
        return
    if overwrite:
        return
    if not out.is_dir() or out.is_symlink():
        raise ConfigError(
            f"--out {out} exists and is not a folder; choose another --out, or pass --overwrite to replace it"
        )
    entries = sorted(entry.name for entry in out.iterdir())
    if not entries:
        return
    written_by = marker(out).get("command")
    if written_by == command:
        return
    what = (
        f"the output of `envtune {written_by}`"
        if written_by
        else f"{len(entries)} entries that `envtune {command}` did not write ({', '.join(entries[:3])}"
        f"{', ...' if len(entries) > 3 else ''})"
    )
    raise ConfigError(
        f"--out {out} exists and holds {what}; choose another --out, or pass --overwrite to replace the whole folder"
    )


def marker(out: Path) -> dict:
    """The marker of an output folder ({} when there is none or it does not read)."""
    try:
        record = json.loads((out / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def mark(out: Path, command: str, source: Path | None) -> None:
    """Records that `out` is the output of `command` (call once it is completely written)."""
    record = {
        "command": command,
        "source": str(Path(source).absolute()) if source is not None else None,
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    (out / MARKER_FILE).write_text(json.dumps(record, indent=1) + "\n")


def remove_if_not_folder(out: Path) -> None:
    """Removes a plain file or link at `out` (only after --overwrite allowed it): the folder written in its
    place is renamed to `out` once complete."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        out.unlink()
