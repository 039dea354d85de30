"""Typed stage configs read from one section of ``params.yaml``, and the demo/paper profiles.

Each stage module defines a frozen dataclass whose fields (with one comment each) are that stage's every
knob. ``load_config(Cls, "section")`` reads the section, refuses unknown or mistyped keys with a one-line
error, and applies CLI overrides. The demo defaults live in ``params.yaml``; a profile such as
``configs/paper.yaml`` holds only overrides and is merged into ``params.yaml`` by ``handeye profile``.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from handeye.errors import HandEyeError

PARAMS_FILE = Path("params.yaml")
PROFILES_DIR = Path("configs")
PROJECT_MARKERS = ("params.yaml", "dvc.yaml")
# The checkout this package was installed from (editable install: src/handeye/config.py -> the repository).
PACKAGE_CHECKOUT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def is_project(folder: Path) -> bool:
    return all((folder / name).is_file() for name in PROJECT_MARKERS)


def project_root(cwd: Path | None = None) -> Path | None:
    """The project that relative defaults (params.yaml, configs/, data/weights, out/models) belong to.

    A working folder with its own params.yaml is its own project (tests and scratch runs rely on that);
    otherwise the nearest parent with params.yaml and dvc.yaml, else the checkout of this package."""
    cwd = (cwd or Path.cwd()).resolve()
    if (cwd / PARAMS_FILE).is_file():
        return cwd
    for folder in cwd.parents:
        if is_project(folder):
            return folder
    return PACKAGE_CHECKOUT if is_project(PACKAGE_CHECKOUT) else None


def project_path(path: str | Path) -> Path:
    """``path`` as given when it exists from here (always so in the project root, which keeps the stages'
    inputs and outputs unchanged), else the project root's copy of it when that exists.

    Only for inputs: an output path is never redirected into the project."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    root = project_root()
    if root is not None and (root / path).exists():
        return root / path
    return path


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = project_path(path)
    if not path.is_file():
        raise HandEyeError(f"parameter file {path} not found: run from the project root (the folder with "
                           f"params.yaml and dvc.yaml) or pass --params FILE")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise HandEyeError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise HandEyeError(f"{path} must hold a mapping of sections")
    return data


def load_config(cls: type[T], section: str, params: str | Path | dict = PARAMS_FILE,
                overrides: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from ``params[section]`` plus ``overrides`` (CLI flags; ``None`` values are ignored)."""
    data = read_yaml(params) if not isinstance(params, dict) else params
    raw = dict(data.get(section) or {})
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, raw, where=section)


def from_dict(cls: type[T], raw: dict[str, Any], where: str) -> T:
    """Strict conversion: unknown keys, missing required keys and wrong types are one-line errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise HandEyeError(f"unknown key(s) in '{where}': {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise HandEyeError(f"missing key '{where}.{name}'")
            continue
        kwargs[name] = _coerce(raw[name], hints[name], f"{where}.{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except HandEyeError as e:
                errors.append(str(e))
        raise HandEyeError(errors[0])
    if origin is typing.Literal:
        if value not in args:
            raise HandEyeError(f"'{where}' must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise HandEyeError(f"'{where}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise HandEyeError(f"'{where}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise HandEyeError(f"'{where}' must be a mapping, got {value!r}")
        return from_dict(hint, value, where)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if isinstance(hint, type) and isinstance(value, hint) and not isinstance(value, bool):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise HandEyeError(f"'{where}' must be {name}, got {value!r}")


def deep_merge(base: dict[str, Any], overrides: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``base`` with ``overrides`` applied recursively; an override key absent from ``base`` is an error,
    so that a typo in a profile cannot silently add a knob nobody reads."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in merged:
            raise HandEyeError(f"profile key '{path}' does not exist in params.yaml")
        if isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = deep_merge(merged[key], value, path)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def known_profiles(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return ["demo", *sorted(p.stem for p in project_path(profiles_dir).glob("*.yaml"))]


def resolve_profile(name: str, params: Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    """The full parameter set of profile ``name``: ``params.yaml`` for demo, else params + overrides."""
    base = read_yaml(params)
    if name == "demo":
        return base
    path = project_path(profiles_dir) / f"{name}.yaml"
    if not path.is_file():
        raise HandEyeError(f"unknown profile '{name}'; known: {', '.join(known_profiles(profiles_dir))}")
    return deep_merge(base, read_yaml(path))
