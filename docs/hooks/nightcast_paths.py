"""MkDocs hook: let mkdocstrings (griffe) find the ``nightcast`` package for the API reference.

The repository keeps flows/, tasks/, models/, schemas/ and deployments/ at its top, and setuptools
installs them as ``nightcast.flows``, ``nightcast.tasks``, ... (``[tool.setuptools.package-dir]`` in
pyproject.toml). Griffe cannot follow that mapping: there is no ``nightcast/`` directory for its static
finder to read, and in an editable install the ``nightcast`` namespace's ``__path__`` is only the import
hook's placeholder, so inspection finds no submodules either. This hook lays the mapping out as a
``nightcast/`` folder of symlinks in a temporary directory and puts that directory first on the python
handler's search paths: the reference is then read statically from the sources, nothing is imported.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority


@event_priority(100)  # before mkdocstrings' own on_config, which creates the handler
def on_config(config: Any) -> Any:
    root = Path(config.config_file_path).resolve().parent
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    mapping: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    farm = Path(tempfile.mkdtemp(prefix="nightcast-api-"))
    atexit.register(shutil.rmtree, farm, ignore_errors=True)
    for name, source in mapping.items():
        link = farm.joinpath(*name.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        (link.parent / "__init__.py").touch()  # a regular package, not merged with other `nightcast` paths
        link.symlink_to(root / source, target_is_directory=True)
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    python["paths"] = [str(farm), *python.get("paths", [])]
    return config
