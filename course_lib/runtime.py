"""Where the course runs, and at which scale.

Every notebook starts with::

    rt = runtime.setup()                       # one banner line
    CFG = rt.pick(small=dict(steps=300, width=64), full=dict(steps=5000, width=256))

The *scale* is ``"small"`` on a CPU (a 2-core laptop finishes each notebook in about two
minutes) and ``"full"`` on a GPU or TPU. One setting overrides the automatic choice: the
environment variable ``COURSE_SCALE`` (``small``, ``full`` or ``auto``), or the ``scale``
argument of :func:`setup`. The argument wins over the variable.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

import jax

SCALE_ENV_VAR = "COURSE_SCALE"
SCALES = ("small", "full")
_CHOICES = SCALES + ("auto",)


@dataclass(frozen=True)
class Runtime:
    """What :func:`detect` found.

    Attributes:
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"`` (JAX's default backend).
      device_count: number of devices of that backend.
      device_kind: e.g. ``"cpu"`` or ``"NVIDIA H100 80GB HBM3"``.
      scale: ``"small"`` or ``"full"``.
      scale_source: why that scale: ``"auto"``, ``"env"`` or ``"argument"``.
      versions: versions of Python, jax, flax and optax.
    """

    backend: str
    device_count: int
    device_kind: str
    scale: str
    scale_source: str
    versions: Mapping[str, str]

    @property
    def accelerated(self) -> bool:
        return self.backend in ("gpu", "tpu")

    def pick(self, *, small: Mapping[str, Any], full: Mapping[str, Any]) -> "Config":
        """The configuration for this scale.

        Both mappings must have the same keys, so that a notebook cannot silently use a
        setting that exists at one scale only.
        """
        return pick_config(self.scale, small=small, full=full)

    def banner(self) -> str:
        v = self.versions
        return (
            f"course_lib | backend={self.backend} x{self.device_count} ({self.device_kind}) | "
            f"scale={self.scale} ({self.scale_source}) | python {v['python']}, jax {v['jax']}, "
            f"flax {v['flax']}, optax {v['optax']}"
        )


class Config(Mapping[str, Any]):
    """A read-only set of named settings; reads as ``CFG.steps`` or ``CFG["steps"]``."""

    def __init__(self, scale: str, values: Mapping[str, Any]):
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))

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
        return f"Config[{self.scale}]({body})"


def pick_config(scale: str, *, small: Mapping[str, Any], full: Mapping[str, Any]) -> Config:
    """Choose ``small`` or ``full`` by ``scale``; both must name the same settings."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if set(small) != set(full):
        only_small = sorted(set(small) - set(full))
        only_full = sorted(set(full) - set(small))
        raise ValueError(
            "small and full configs must name the same settings; "
            f"only in small: {only_small}, only in full: {only_full}"
        )
    return Config(scale, small if scale == "small" else full)


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


def detect(scale: str | None = None) -> Runtime:
    """Inspect JAX's default backend and resolve the scale (no printing)."""
    backend = jax.default_backend()
    devices = jax.devices()
    chosen, source = _resolve_scale(scale, backend)
    return Runtime(
        backend=backend,
        device_count=len(devices),
        device_kind=devices[0].device_kind,
        scale=chosen,
        scale_source=source,
        versions=MappingProxyType(_versions()),
    )


def setup(scale: str | None = None, *, quiet: bool = False) -> Runtime:
    """:func:`detect`, then print the one-line banner (unless ``quiet``)."""
    rt = detect(scale)
    if not quiet:
        print(rt.banner())
    return rt
