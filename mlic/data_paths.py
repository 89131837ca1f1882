"""Where a run's data is, wherever the run is now and whatever the working directory.

A run's config.yaml names its data by paths (``data.train``, ``data.classes``, a split's ``root``
...). Training records them absolute (``with_absolute_paths``), so every command on the run works
from any working directory while the data stays where it was. When a path is not there any more,
``locate_data`` looks where it was *relative to the run folder* at training time: a run copied or
moved together with its data (the demo's folder, say) finds it at its new place. The run's old
place is its config's ``output_dir`` / the run folder's name; runs trained before paths were
recorded absolute (relative to the training's working directory, as its ``output_dir``) are found
the same way. Where neither place holds it, the error names both and how to point elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from mlic.errors import ConfigError

SPLITS = ("train", "val", "test")
PATH_KEYS = ("path", "root", "classes")  # the keys of a split spec that name files or folders


def _each_path(data: Mapping[str, Any], change: Callable[[str, str], str],
               keys: tuple[str, ...] = (*SPLITS, "classes")) -> dict[str, Any]:
    """``data`` with ``change(where, path)`` applied to every path of its ``keys``."""
    out = dict(data)
    for split in (k for k in SPLITS if k in keys):
        spec = data.get(split)
        if isinstance(spec, (str, Path)):
            out[split] = change(f"data.{split}", str(spec))
        elif isinstance(spec, Mapping):
            out[split] = {k: change(f"data.{split}.{k}", str(v))
                          if k in PATH_KEYS and isinstance(v, (str, Path)) else v
                          for k, v in spec.items()}
    if "classes" in keys and isinstance(data.get("classes"), (str, Path)):
        out["classes"] = change("data.classes", str(data["classes"]))
    return out


def with_absolute_paths(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with its data paths and ``output_dir`` absolute (lexically: symbolic links are
    kept as the user wrote them)."""
    def absolute(_: str, path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))
    out = dict(config)
    out["data"] = _each_path(config.get("data") or {}, absolute)
    if config.get("output_dir"):
        out["output_dir"] = absolute("output_dir", str(config["output_dir"]))
    return out


def locate_data(run_dir: str | Path, config: Mapping[str, Any],
                keys: tuple[str, ...] = (*SPLITS, "classes"), hint: str = "") -> dict[str, Any]:
    """The run's ``data`` section with the paths of ``keys`` (splits, classes) found: where it is
    recorded (absolute, or relative to the working directory), else at its place relative to the
    run folder when it was trained. ``hint`` ends the error."""
    run_dir = Path(run_dir)
    origin = Path(str(config.get("output_dir") or ".")).expanduser() / run_dir.name

    def find(where: str, path: str) -> str:
        recorded = Path(path).expanduser()
        if recorded.exists():
            return path
        moved = run_dir / os.path.relpath(recorded, origin)
        if moved.exists():
            return os.path.normpath(os.path.abspath(moved))
        raise ConfigError(f"{run_dir / 'config.yaml'}: {where} {path} does not exist, nor at "
                          f"{os.path.normpath(moved)} (its place relative to the run when it was "
                          f"trained){hint}")
    return _each_path(config.get("data") or {}, find, keys)
