"""course_lib.runtime: backend detection, scale resolution and its overrides, configs."""
import jax
import pytest

from course_lib import runtime


@pytest.fixture(autouse=True)
def no_overrides_from_outside(monkeypatch):
    """A COURSE_OVERRIDES exported in the shell must not change what these tests see."""
    monkeypatch.delenv(runtime.OVERRIDES_ENV_VAR, raising=False)


def test_detects_this_machine(monkeypatch):
    monkeypatch.delenv(runtime.SCALE_ENV_VAR, raising=False)
    rt = runtime.detect()
    assert rt.backend == jax.default_backend()
    assert rt.device_count == len(jax.devices()) >= 1
    assert rt.scale_source == "auto"
    if rt.backend == "cpu":                 # CI and laptops; an accelerator is tested below
        assert rt.scale == "small"


class _FakeDevice:
    device_kind = "Fake accelerator"


@pytest.mark.parametrize("backend, scale", [("gpu", "full"), ("tpu", "full"), ("cpu", "small")])
def test_detect_picks_the_scale_from_the_backend(monkeypatch, backend, scale):
    """detect() on a machine whose JAX backend is a GPU or TPU (faked) chooses the full scale."""
    monkeypatch.delenv(runtime.SCALE_ENV_VAR, raising=False)
    monkeypatch.setattr(runtime.jax, "default_backend", lambda: backend)
    monkeypatch.setattr(runtime.jax, "devices", lambda *a: [_FakeDevice(), _FakeDevice()])
    rt = runtime.detect()
    assert (rt.backend, rt.device_count, rt.device_kind) == (backend, 2, "Fake accelerator")
    assert (rt.scale, rt.scale_source) == (scale, "auto")


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


# --------------------------------------------------------------------------- COURSE_OVERRIDES

SMALL = dict(steps=10, width=8, lr=1e-3, channels=(16, 32), dataset="mnist_small")
FULL = dict(steps=1000, width=256, lr=3e-4, channels=(32, 64), dataset="mnist")


def test_overrides_replace_settings_of_the_chosen_scale(monkeypatch):
    monkeypatch.setenv(runtime.OVERRIDES_ENV_VAR, '{"steps": 5, "channels": [4, 8], "lr": 1}')
    cfg = runtime.pick_config("full", small=SMALL, full=FULL)
    assert cfg.steps == 5 and cfg.width == 256 and cfg.dataset == "mnist"
    assert cfg.channels == (4, 8)                          # a JSON list replaces a tuple as a tuple
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)     # 1 replaces a float as a float
    assert cfg.overridden == ("steps", "channels", "lr")
    assert repr(cfg).startswith("Config[full; COURSE_OVERRIDES: steps, channels, lr](steps=5,")
    assert runtime.pick_config("small", small=SMALL, full=FULL).steps == 5   # either scale
    # An explicit argument wins over the variable; {} means none.
    assert runtime.pick_config("small", small=SMALL, full=FULL, overrides={}).steps == 10
    assert runtime.pick_config("small", small=SMALL, full=FULL, overrides={"width": 2}).width == 2


def test_rt_pick_applies_the_overrides_and_the_banner_lists_them(monkeypatch, capsys):
    monkeypatch.setenv(runtime.SCALE_ENV_VAR, "small")
    monkeypatch.setenv(runtime.OVERRIDES_ENV_VAR, ' {"steps": 5, "eval_every": 5} ')
    rt = runtime.setup()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.rstrip().endswith("| COURSE_OVERRIDES: steps=5, eval_every=5")
    cfg = rt.pick(small=dict(steps=300, eval_every=50, width=8), full=dict(steps=9, eval_every=9, width=9))
    assert dict(cfg) == {"steps": 5, "eval_every": 5, "width": 8}


def test_no_overrides_by_default(monkeypatch):
    for value in (None, "", "  "):
        if value is None:
            monkeypatch.delenv(runtime.OVERRIDES_ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(runtime.OVERRIDES_ENV_VAR, value)
        cfg = runtime.pick_config("small", small=SMALL, full=FULL)
        assert dict(cfg) == SMALL and cfg.overridden == () and repr(cfg).startswith("Config[small](")
        assert "COURSE_OVERRIDES" not in runtime.detect("small").banner()


def test_an_override_of_no_setting_names_it_and_the_valid_ones(monkeypatch):
    monkeypatch.setenv(runtime.OVERRIDES_ENV_VAR, '{"stpes": 5, "steps": 4}')
    with pytest.raises(ValueError) as info:
        runtime.pick_config("small", small=SMALL, full=FULL)
    message = str(info.value)
    assert "COURSE_OVERRIDES" in message and "'stpes'" in message
    assert "valid settings: channels, dataset, lr, steps, width" in message
    monkeypatch.setenv(runtime.SCALE_ENV_VAR, "small")
    with pytest.raises(ValueError, match="'stpes'"):
        runtime.setup(quiet=True).pick(small=SMALL, full=FULL)


@pytest.mark.parametrize("raw, expected", [
    ("{steps: 5}", "COURSE_OVERRIDES is not valid JSON"),
    ('{"steps": 5', "COURSE_OVERRIDES is not valid JSON"),
    ("steps=5", "COURSE_OVERRIDES is not valid JSON"),
    ("[5]", "COURSE_OVERRIDES must hold a JSON object"),
    ("5", "COURSE_OVERRIDES must hold a JSON object"),
])
def test_bad_overrides_name_the_variable(monkeypatch, raw, expected):
    monkeypatch.setenv(runtime.OVERRIDES_ENV_VAR, raw)
    with pytest.raises(ValueError, match=expected):
        runtime.pick_config("small", small=SMALL, full=FULL)
    with pytest.raises(ValueError, match=expected):   # already when the runtime cell runs
        runtime.setup(quiet=True)


# --------------------------------------------------------------------------- full_data

@pytest.fixture
def offline_fetch(monkeypatch):
    """data.fetch replaced by a stand-in that fails like an offline machine; records calls."""
    from course_lib import data

    calls = []

    def fetch(name, **kwargs):
        calls.append(name)
        raise data.DataError(f"could not fetch {name}/train-images-idx3-ubyte.gz (are you "
                             f"offline?); run `python -m course_lib.data fetch {name}` again "
                             "once online; tried https://example.invalid: URLError")

    monkeypatch.setattr(data, "fetch", fetch)
    monkeypatch.setattr(data, "is_fetched", lambda name: False)
    monkeypatch.delenv(runtime.OVERRIDES_ENV_VAR, raising=False)
    return calls


def test_full_scale_falls_back_with_one_line_when_data_cannot_be_fetched(offline_fetch, capsys, monkeypatch):
    monkeypatch.setenv(runtime.SCALE_ENV_VAR, "full")
    rt = runtime.setup(full_data=("mnist",))
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert offline_fetch == ["mnist"]
    assert (rt.scale, rt.scale_source, rt.fallback) == ("small", "fallback", "mnist unavailable")
    assert len(lines) == 2 and out.err == ""
    assert lines[0].startswith("full scale needs mnist, which could not be fetched (are you offline?); "
                               "falling back to the small scale")
    assert "python -m course_lib.data fetch mnist" in lines[0]
    assert "scale=small (fallback: mnist unavailable)" in lines[1] == rt.banner()
    assert rt.pick(small=dict(n=1), full=dict(n=2)).n == 1
    # detect() decides the same without printing; quiet=True prints nothing either.
    assert runtime.detect("full", full_data=("mnist",)).scale_source == "fallback"
    assert runtime.setup("full", quiet=True, full_data=("mnist",)).scale == "small"
    assert capsys.readouterr().out == ""


def test_a_checksum_failure_says_so(offline_fetch, capsys, monkeypatch):
    from course_lib import data

    def bad_copy(name, **kwargs):
        raise data.DataError(f"could not fetch {name}/x.gz (every copy failed its sha256 check); "
                             "tried url: _ChecksumMismatch: sha256 mismatch")

    monkeypatch.setattr(data, "fetch", bad_copy)
    rt = runtime.setup("full", full_data=("fashion_mnist",))
    line = capsys.readouterr().out.splitlines()[0]
    assert rt.scale_source == "fallback" and rt.fallback == "fashion_mnist unavailable"
    assert "could not be fetched (its download did not match the sha256" in line


def test_full_scale_fetches_missing_data_then_stays_full(monkeypatch, capsys):
    from course_lib import data

    calls = []
    monkeypatch.setattr(data, "is_fetched", lambda name: False)
    monkeypatch.setattr(data, "fetch", lambda name, **kw: calls.append((name, kw)) or data.data_dir() / name)
    monkeypatch.delenv(runtime.OVERRIDES_ENV_VAR, raising=False)
    rt = runtime.setup("full", full_data=("mnist", "fashion_mnist", "mnist"))
    assert calls == [("mnist", {"progress": True}), ("fashion_mnist", {"progress": True})]
    assert (rt.scale, rt.scale_source, rt.fallback) == ("full", "argument", "")
    assert capsys.readouterr().out.splitlines() == [rt.banner()]
    calls.clear()
    runtime.detect("full", full_data=("mnist",))
    assert calls == [("mnist", {"progress": False})]       # detect() shows no progress bar


def test_present_and_verified_data_is_not_fetched_again(monkeypatch):
    from course_lib import data

    def no_fetch(name, **kwargs):
        raise AssertionError("fetch must not be called")

    monkeypatch.setattr(data, "fetch", no_fetch)
    monkeypatch.setattr(data, "is_fetched", lambda name: name == "mnist")
    rt = runtime.detect("full", full_data=("mnist",))
    assert (rt.scale, rt.scale_source) == ("full", "argument")


def test_is_fetched_checks_the_manifest_sha256(tmp_path, monkeypatch):
    """The real check (not a stand-in): files present with the manifest's hashes."""
    import hashlib
    import json

    from course_lib import data

    manifest = json.loads(json.dumps(data.manifest()))
    (tmp_path / "mnist").mkdir()
    for f in manifest["fetch"]["mnist"]["files"]:
        blob = f.encode()
        (tmp_path / "mnist" / f).write_bytes(blob)
        manifest["files"][f"mnist/{f}"] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    monkeypatch.setattr(data, "manifest", lambda: manifest)
    monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(data, "fetch", lambda name, **kw: pytest.fail("fetch must not be called"))
    assert data.is_fetched("mnist")
    assert runtime.detect("full", full_data=("mnist",)).scale == "full"
    (tmp_path / "mnist" / manifest["fetch"]["mnist"]["files"][0]).write_bytes(b"XXXXXXXXXXXXXXXXXXXXXXXXX"[:5])
    assert not data.is_fetched("mnist")


def test_small_scale_never_fetches(offline_fetch):
    rt = runtime.detect("small", full_data=("mnist",))
    assert offline_fetch == [] and (rt.scale, rt.scale_source) == ("small", "argument")


def test_an_overridden_setting_replaces_the_data_the_full_scale_needs(offline_fetch, monkeypatch):
    # {"dataset": "mnist"}: the full config's setting `dataset` needs mnist ...
    rt = runtime.detect("full", full_data={"dataset": "mnist"})
    assert offline_fetch == ["mnist"] and rt.scale_source == "fallback"
    # ... unless COURSE_OVERRIDES replaces that setting with data that ships offline
    offline_fetch.clear()
    monkeypatch.setenv(runtime.OVERRIDES_ENV_VAR, '{"dataset": "mnist_small", "steps": 5}')
    rt = runtime.detect("full", full_data={"dataset": "mnist"})
    assert offline_fetch == [] and (rt.scale, rt.scale_source) == ("full", "argument")
    assert rt.pick(small=dict(dataset="mnist_small", steps=1), full=dict(dataset="mnist", steps=9)) \
        == {"dataset": "mnist_small", "steps": 5}
    # or with another set that must be fetched: that one is needed instead.
    monkeypatch.setenv(runtime.OVERRIDES_ENV_VAR, '{"dataset": "fashion_mnist"}')
    assert runtime.detect("full", full_data={"dataset": "mnist"}).fallback == "fashion_mnist unavailable"
    assert offline_fetch == ["fashion_mnist"]
    # A plain list of names is needed whatever the overrides say.
    offline_fetch.clear()
    monkeypatch.setenv(runtime.OVERRIDES_ENV_VAR, '{"dataset": "mnist_small"}')
    assert runtime.detect("full", full_data=("mnist",)).scale_source == "fallback"


def test_full_data_names_are_checked(offline_fetch):
    with pytest.raises(ValueError, match="unknown dataset 'mnits'"):
        runtime.detect("small", full_data=("mnits",))
    with pytest.raises(TypeError, match=r"full_data=\('mnist',\)"):
        runtime.detect("full", full_data="mnist")
    # Data that ships offline needs no download: nothing to fetch, the scale stays full.
    rt = runtime.detect("full", full_data=("mnist_small", "shakespeare"))
    assert offline_fetch == [] and rt.scale == "full"


def test_a_filesystem_error_falls_back_too(monkeypatch, capsys):
    from course_lib import data

    def read_only(name, **kwargs):
        raise PermissionError(13, "Permission denied", str(data.data_dir() / name))

    monkeypatch.setattr(data, "is_fetched", lambda name: False)
    monkeypatch.setattr(data, "fetch", read_only)
    rt = runtime.setup("full", full_data=("mnist",))
    lines = capsys.readouterr().out.splitlines()
    assert rt.scale_source == "fallback" and len(lines) == 2
    assert "could not be fetched (PermissionError: [Errno 13] Permission denied" in lines[0]
