"""course_lib.runtime: backend detection, scale resolution and its overrides, configs."""
import jax
import pytest

from course_lib import runtime


def test_detects_this_machine(monkeypatch):
    monkeypatch.delenv(runtime.SCALE_ENV_VAR, raising=False)
    rt = runtime.detect()
    assert rt.backend == jax.default_backend()
    assert rt.device_count == len(jax.devices()) >= 1
    expected = "full" if rt.backend in ("gpu", "tpu") else "small"
    assert (rt.scale, rt.scale_source) == (expected, "auto")


@pytest.mark.parametrize("env, arg, expected", [
    ("full", None, ("full", "env")),
    ("small", None, ("small", "env")),
    (" FULL ", None, ("full", "env")),
    ("full", "small", ("small", "argument")),   # the argument wins over the variable
    ("", "full", ("full", "argument")),
])
def test_overrides(monkeypatch, env, arg, expected):
    monkeypatch.setenv(runtime.SCALE_ENV_VAR, env)
    rt = runtime.detect(arg)
    assert (rt.scale, rt.scale_source) == expected


def test_auto_follows_backend(monkeypatch):
    monkeypatch.delenv(runtime.SCALE_ENV_VAR, raising=False)   # CI sets COURSE_SCALE=small
    assert runtime._resolve_scale(None, "gpu")[0] == "full"
    assert runtime._resolve_scale(None, "tpu")[0] == "full"
    assert runtime._resolve_scale("auto", "cpu") == ("small", "argument")


def test_bad_scale_names_the_setting(monkeypatch):
    monkeypatch.setenv(runtime.SCALE_ENV_VAR, "huge")
    with pytest.raises(ValueError, match="COURSE_SCALE.*'huge'"):
        runtime.detect()
    with pytest.raises(ValueError, match="scale argument"):
        runtime.detect("medium")


def test_banner_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv(runtime.SCALE_ENV_VAR, "small")
    rt = runtime.setup()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "scale=small (env)" in out and f"jax {jax.__version__}" in out
    runtime.setup(quiet=True)
    assert capsys.readouterr().out == ""
    assert rt.accelerated == (rt.backend != "cpu")


def test_pick_config():
    cfg = runtime.pick_config("small", small=dict(steps=10, width=8), full=dict(steps=1000, width=256))
    assert cfg.steps == 10 and cfg["width"] == 8 and dict(cfg) == {"steps": 10, "width": 8}
    assert runtime.pick_config("full", small=dict(a=1), full=dict(a=2)).a == 2
    assert "Config[small]" in repr(cfg)
    with pytest.raises(AttributeError, match="no setting 'stpes'"):
        cfg.stpes
    with pytest.raises(AttributeError, match="read-only"):
        cfg.steps = 3
    with pytest.raises(ValueError, match="only in small: \\['extra'\\]"):
        runtime.pick_config("small", small=dict(a=1, extra=2), full=dict(a=1))
