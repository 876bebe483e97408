"""The files of a Hugging Face checkpoint folder: which safetensors file holds each tensor, and whether
each file is whole. JAX-free (only `json`, `struct` and, to open a file, `safetensors`), so the command
line runs the same checks before any heavy import that the loader (models/hf_io.py) runs while loading:
one set of checks, one wording per fault, one error type.

- `tensor_files(hf_dir)`: tensor name -> file, from `model.safetensors.index.json` (every entry a plain
  name inside the folder, every file present) or from the header of a single `model.safetensors`.
- `read_header(file)`: a file's JSON header, read by hand; a file cut short (its header or its tensors
  end past the end of the file) or not a safetensors file at all is refused naming the file.
- `check_files(hf_dir)`: both, for every file, without reading any tensor data.
- `open_safetensors(file)`: the safetensors handle the loader reads tensors through, after `read_header`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
HEADER_LENGTH_BYTES = 8  # a little-endian u64 giving the length of the JSON header that follows


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed, or does not match the model; the message names the file and
    the tensor."""


def _unreadable(file: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{file}: not a readable safetensors file ({why}); download or copy it again")


def read_header(file: Path) -> dict[str, Any]:
    """The JSON header of safetensors `file`: tensor name -> {dtype, shape, data_offsets} (and
    `__metadata__`). CheckpointError when the file is cut short or is not a safetensors file."""
    file = Path(file)
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(HEADER_LENGTH_BYTES)
        if len(head) < HEADER_LENGTH_BYTES:
            raise _unreadable(file, f"truncated: {size} bytes")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - HEADER_LENGTH_BYTES:
            raise _unreadable(
                file,
                f"truncated or garbage: its header length says {header_len} bytes, "
                f"the file holds {size - HEADER_LENGTH_BYTES}",
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _unreadable(file, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _unreadable(file, "its header is not a JSON object")
    data_bytes = size - HEADER_LENGTH_BYTES - header_len
    ends = [
        entry.get("data_offsets", [0, 0])[1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict)
    ]
    if ends and max(ends) > data_bytes:
        raise _unreadable(file, f"truncated: its tensors need {max(ends)} bytes of data, the file holds {data_bytes}")
    return header


def _indexed_file(hf_dir: Path, index_path: Path, name: str, file: Any) -> Path:
    """The file an index's weight_map entry names: a plain relative name inside the checkpoint folder
    (symlinks in the folder, as in the HF hub cache, are fine: only the name is checked)."""
    parts = Path(file).parts if isinstance(file, str) else ()
    if not parts or Path(file).is_absolute() or any(part in ("..", ".") for part in parts):
        raise CheckpointError(f"{index_path}: weight_map['{name}'] = {file!r} is not a file inside {hf_dir}")
    return hf_dir / file


def _read_index(index_path: Path) -> dict[str, Any]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise CheckpointError(f"{index_path}: not valid JSON{where}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: no 'weight_map'")
    return weight_map


def tensor_files(hf_dir: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it. Every file the index names must exist; a single
    file's header must be whole."""
    hf_dir = Path(hf_dir)
    index_path = hf_dir / INDEX_FILE
    if index_path.is_file():
        files = {name: _indexed_file(hf_dir, index_path, name, file) for name, file in _read_index(index_path).items()}
        missing = sorted({str(file.relative_to(hf_dir)) for file in files.values() if not file.is_file()})
        if missing:
            raise CheckpointError(
                f"{index_path}: lists {missing[0]}, which is missing"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        return files
    single = hf_dir / SINGLE_FILE
    if single.is_file():
        return {name: single for name in read_header(single) if name != "__metadata__"}
    raise CheckpointError(f"{hf_dir}: no {SINGLE_FILE} or {INDEX_FILE}")


def check_files(hf_dir: str | Path) -> dict[str, Path]:
    """`tensor_files`, with every file's header read and checked (no tensor data is read)."""
    files = tensor_files(hf_dir)
    for file in sorted(set(files.values())):
        read_header(file)
    return files


def open_safetensors(file: Path):
    """An open `safetensors.safe_open` handle (numpy) on `file`; a file that is not one is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(file), framework="numpy")
    except (SafetensorError, OSError) as exc:
        raise _unreadable(Path(file), str(exc)) from None
