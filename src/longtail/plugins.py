"""Plugins: a Python file or an installed module that registers components with longtail's public decorators
(`longtail.register_loss`, `register_posthoc`, `register_dataset`, ...), without editing the package.

Three ways to load one, all ending in `load_plugins`:

- `plugins: [my_methods.py, my_pkg.losses]` in a config (files relative to the config file; config.load_yaml);
- `--plugin FILE|MODULE` on any command (repeatable); the CLI also passes them to the processes it starts
  (sweeps) through the environment variable LONGTAIL_PLUGINS;
- the entry-point group `longtail.plugins` of installed packages (`load_entry_points`, once per process).

A plugin is known by its identity, a file's stem or a module's name, and is loaded once per process. A run
records the plugins it was trained with (`recorded`: spec, identity, file, sha256) in its checkpoints;
evaluate, predict, export, tune and shift of that run load them again (`reload_recorded`) and refuse in one
line when a file is missing or changed, unless a plugin of that identity was given with `--plugin` (a
replacement). Every failure of a plugin is one line naming the file (and the component).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .errors import LongtailError, one_line

ENTRY_POINT_GROUP = "longtail.plugins"
ENV = "LONGTAIL_PLUGINS"  # os.pathsep-separated specs the CLI hands to the processes it starts
MODULE_PREFIX = "longtail_plugins."  # plugin files are imported as longtail_plugins.<stem>


@dataclass(frozen=True)
class Plugin:
    spec: str  # a file's absolute path, or a module's name
    name: str  # identity: the file's stem or the module's name
    path: Optional[str]  # the file whose code it is
    sha256: Optional[str]


_LOADED: dict[str, Plugin] = {}
_entry_points_loaded = False


def is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def relative_to(spec: Any, base: Path) -> Any:
    """A file spec relative to `base` made absolute (a config's plugins are relative to the config file)."""
    if not isinstance(spec, str) or not is_file(spec) or Path(spec).expanduser().is_absolute():
        return spec
    return str((base / spec).resolve())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _identity(spec: str) -> str:
    return Path(spec).stem if is_file(spec) else spec


def load_plugins(specs: Iterable[str], base_dir: Optional[Path] = None) -> list[str]:
    """Load each plugin (files relative to `base_dir`, default the working directory); returns the specs resolved
    (absolute paths for files), as a config records them."""
    resolved = []
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise LongtailError(f"a plugin is a Python file or a module name, got {spec!r:.60}")
        spec = relative_to(spec, base_dir or Path.cwd()) if is_file(spec) else spec
        load_plugin(spec)  # an identity loaded already (the same file, or a --plugin replacement) stands
        resolved.append(spec)
    return resolved


def load_plugin(spec: str) -> Plugin:
    """Import one plugin file or module (once per identity)."""
    name = _identity(spec)
    if name in _LOADED:
        return _LOADED[name]
    if is_file(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise LongtailError(f"plugin file '{path}' does not exist; fix the path (a config's plugins are relative to "
                                "the config file, --plugin's to the working directory)")
        module_name = MODULE_PREFIX + path.stem
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(module_name, None)
            raise _failure(str(path), exc) from None
        plugin = Plugin(str(path), name, str(path), sha256(path))
    else:
        try:
            module = importlib.import_module(spec)
        except BaseException as exc:
            raise _failure(f"module {spec}", exc) from None
        file = getattr(module, "__file__", None)
        plugin = Plugin(spec, name, file, sha256(Path(file)) if file else None)
    _LOADED[name] = plugin
    return plugin


def _failure(where: str, exc: BaseException) -> LongtailError:
    if isinstance(exc, LongtailError):  # a registration refused: its message names the component and the file
        return LongtailError(f"plugin '{where}': {exc}")
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    return LongtailError(f"plugin '{where}' raised {type(exc).__name__} at import: {one_line(exc, 160)}; fix the plugin")


def load_entry_points() -> None:
    """Load the installed packages' plugins (group `longtail.plugins`) and LONGTAIL_PLUGINS, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        load_plugin(point.value.split(":")[0])
    env = os.environ.get(ENV, "")
    load_plugins([s for s in env.split(os.pathsep) if s])


def export_to_children(specs: Sequence[str]) -> None:
    """Hand the plugins given on the command line to the processes this one starts (sweeps)."""
    if specs:
        os.environ[ENV] = os.pathsep.join([*filter(None, os.environ.get(ENV, "").split(os.pathsep)), *specs])


def loaded() -> list[Plugin]:
    return list(_LOADED.values())


def recorded() -> list[dict[str, Any]]:
    """What a checkpoint stores: every plugin this process loaded."""
    return [asdict(p) for p in _LOADED.values()]


def reload_recorded(records: Sequence[dict[str, Any]], source: str | Path) -> None:
    """Load the plugins a run was trained with. A plugin whose identity is loaded already (given with --plugin, or
    this process trained the run) stands; otherwise its file must be there with the sha256 recorded."""
    load_entry_points()
    for record in records or ():
        name, path, digest = record.get("name"), record.get("path"), record.get("sha256")
        if name in _LOADED:
            continue
        how = "put it back, or pass --plugin FILE with a replacement defining the run's components"
        if path is None or not Path(path).is_file():
            raise LongtailError(f"the run '{source}' was trained with plugin '{path or record.get('spec')}', which is missing; {how}")
        if digest is not None and sha256(Path(path)) != digest:
            raise LongtailError(f"plugin '{path}' has changed since the run '{source}' was trained (sha256 {digest[:12]}... "
                                f"recorded); restore it, or {how.split(', or ')[1]}")
        load_plugin(record.get("spec") or path)


def forget(name: str) -> None:
    """Drop a plugin's record (tests that load and unload plugins in one process)."""
    _LOADED.pop(name, None)
    sys.modules.pop(MODULE_PREFIX + name, None)


__all__ = ["load_plugins", "load_plugin", "load_entry_points", "reload_recorded", "recorded", "loaded",
           "export_to_children", "relative_to", "ENTRY_POINT_GROUP", "Plugin"]
