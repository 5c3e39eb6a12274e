"""Model folders built once and cached: a marker file says what built them, and a build is
published by one rename, so a crash or a concurrent build never leaves a folder that looks
complete but is not."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json"]


def is_built(out_dir: Path, marker_file: str, marker: dict) -> bool:
    """`out_dir` holds a complete folder whose marker equals `marker`."""
    if not all((out_dir / name).exists() for name in [marker_file, *MODEL_FILES]):
        return False
    return json.loads((out_dir / marker_file).read_text()) == marker


def build_folder(out_dir: Path, marker_file: str, marker: dict, write: Callable[[Path], None]) -> Path:
    """Run `write(scratch)` in a folder beside `out_dir`, add the marker, and rename it into place.

    An older build (a folder with `marker_file` but another marker) is replaced; a folder of
    other files is refused rather than overwritten.
    """
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / marker_file).exists():
        raise FileExistsError(f"{out_dir} holds other files: not overwriting them with a built model")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        write(scratch)
        (scratch / marker_file).write_text(json.dumps(marker, indent=2) + "\n")
        for path in [scratch, *scratch.iterdir()]:  # mkdtemp and safetensors make them private (0700, 0600)
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        try:
            os.replace(scratch, out_dir)  # atomic, where out_dir is absent or empty
        except OSError:
            if not is_built(out_dir, marker_file, marker):  # else a concurrent build got there first
                old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old."))
                os.replace(out_dir, old / "model")
                os.replace(scratch, out_dir)
                shutil.rmtree(old)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir
