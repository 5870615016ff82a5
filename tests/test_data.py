"""course_lib.data: shapes, dtypes, seeded splits, and clear errors for bad input."""
import gzip
import hashlib
import json
import shutil

import numpy as np
import pytest

from course_lib import data


@pytest.mark.parametrize("name, shape, n_total, n_classes", [
    ("digits", (8, 8), 1797, 10),
    ("mnist_small", (28, 28), 5000, 10),
])
def test_image_sets(name, shape, n_total, n_classes):
    s = data.load(name)
    assert s.x_train.shape[1:] == shape and s.x_test.shape[1:] == shape
    assert len(s.x_train) + len(s.x_test) == n_total
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int32
    assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0
    assert set(np.unique(s.y_test)) == set(range(n_classes))
    # Stratified: the test set holds about 20% of every class.
    frac = np.bincount(s.y_test) / (np.bincount(s.y_test) + np.bincount(s.y_train))
    assert np.all(np.abs(frac - 0.2) < 0.01)


def test_splits_are_fixed_and_disjoint():
    a, b = data.load_digits(), data.load_digits()
    np.testing.assert_array_equal(a.x_test, b.x_test)
    tr, te = data.stratified_split(np.repeat(np.arange(3), 10), 0.3)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 30
    with pytest.raises(ValueError, match="test_fraction"):
        data.stratified_split(np.zeros(4), 1.5)


def test_iris_and_series():
    iris = data.load("iris")
    assert iris.x_train.shape[1] == 4 and len(iris.feature_names) == 4
    for name, n in [("sunspots", 309), ("nile", 100)]:
        s = data.load(name)
        assert len(s.values) == len(s.time) == n and s.values.dtype == np.float64
    co2 = data.load("co2")
    assert not np.isnan(co2.values).any() and np.all(np.diff(co2.time) > 0)


def test_text_corpora():
    text = data.load("shakespeare")
    assert len(text) == 5_057_198 and text.isascii()
    assert "To be, or not to be" in text
    names = data.load("names")
    assert len(names) == 5163 and names == sorted(set(names)) and "mary" in names


def test_char_vocab_round_trip():
    vocab = data.CharVocab.from_text("hello world")
    ids = vocab.encode("hello")
    assert ids.dtype == np.int32 and vocab.decode(ids) == "hello" and vocab.size == 8
    assert data.CharVocab.from_text(["ab", "bc"]).chars == "abc"
    with pytest.raises(ValueError, match="'z'"):
        vocab.encode("z")


def test_unknown_dataset_names_the_choices():
    with pytest.raises(data.DataError, match="unknown dataset 'mnits'.*mnist_small"):
        data.load("mnits")
    with pytest.raises(data.DataError, match="unknown series"):
        data.load_series("dow_jones")


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A private data directory holding copies of the prepared corpora."""
    for f in ("shakespeare.txt", "names.txt"):
        shutil.copy(data.repo_root() / "data" / f, tmp_path / f)
    monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(tmp_path))
    return tmp_path


def test_missing_corpus_names_the_fix(data_copy):
    (data_copy / "names.txt").unlink()
    with pytest.raises(data.DataError, match="names.txt is missing.*make data"):
        data.load("names")


def test_corrupted_corpus_is_detected(data_copy):
    path = data_copy / "shakespeare.txt"
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 1  # one flipped bit, same size
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="damaged.*make data"):
        data.load("shakespeare")


def test_fetch_offline_is_one_clear_error(data_copy):
    # Port 9 on loopback (discard) refuses connections: an offline machine, no internet used.
    with pytest.raises(data.DataError) as info:
        data.fetch("mnist", mirrors=["http://127.0.0.1:9/nowhere"], timeout=2)
    message = str(info.value)
    assert "could not fetch mnist/" in message and "offline" in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not list((data_copy / "mnist").glob("*.gz")), "no partial file may be left behind"


def test_fetched_set_is_verified_then_loaded(data_copy, tmp_path, monkeypatch):
    """A fake 'mirror' on disk serves IDX files; the manifest is patched with their hashes."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 7], dtype=np.uint8)

    def idx(arr):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        return gzip.compress(header + arr.tobytes(), mtime=0)

    blobs = {"train-images-idx3-ubyte.gz": idx(images), "train-labels-idx1-ubyte.gz": idx(labels),
             "t10k-images-idx3-ubyte.gz": idx(images), "t10k-labels-idx1-ubyte.gz": idx(labels)}
    manifest = json.loads(json.dumps(data.manifest()))
    for fname, blob in blobs.items():
        (mirror / fname).write_bytes(blob)
        manifest["files"][f"mnist/{fname}"] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    monkeypatch.setattr(data, "manifest", lambda: manifest)
    data.fetch("mnist", mirrors=[mirror.as_uri()])
    split = data.load("mnist")
    assert split.x_train.shape == (2, 28, 28) and list(split.y_test) == [3, 7]
    np.testing.assert_allclose(split.x_train[0, 0, 1], 1 / 255, rtol=1e-6)
    # A tampered mirror file is refused and the good copy stays.
    (mirror / "train-labels-idx1-ubyte.gz").write_bytes(b"evil")
    (data_copy / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="sha256 mismatch"):
        data.fetch("mnist", mirrors=[mirror.as_uri()])


def test_cli_prints_one_line_on_failure(data_copy, capsys):
    (data_copy / "names.txt").unlink()
    assert data._main(["check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: names.txt is missing") and err.count("\n") == 1


def _fake_mnist_mirror(mirror, monkeypatch):
    """IDX files in a folder used as a 'mirror', and the manifest patched with their hashes."""
    mirror.mkdir()
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([1, 2, 3], dtype=np.uint8)

    def idx(arr):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        return gzip.compress(header + arr.tobytes(), mtime=0)

    manifest = json.loads(json.dumps(data.manifest()))
    for fname in manifest["fetch"]["mnist"]["files"]:
        blob = idx(images if "images" in fname else labels)
        (mirror / fname).write_bytes(blob)
        manifest["files"][f"mnist/{fname}"] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    monkeypatch.setattr(data, "manifest", lambda: manifest)
    return manifest


def test_fetch_names_the_command_and_never_leaves_a_partial_file(data_copy, tmp_path, monkeypatch):
    manifest = _fake_mnist_mirror(tmp_path / "mirror", monkeypatch)
    first = manifest["fetch"]["mnist"]["files"][0]
    # Offline: the one-line error says how to retry.
    with pytest.raises(data.DataError) as info:
        data.fetch("mnist", mirrors=["http://127.0.0.1:9/nowhere"], timeout=2)
    assert "run `python -m course_lib.data fetch mnist` again once online" in str(info.value)
    assert not data.is_fetched("mnist")
    # A mirror serving a truncated copy: refused, named as a checksum failure, nothing lands.
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / first).write_bytes((tmp_path / "mirror" / first).read_bytes()[:-10])
    with pytest.raises(data.DataError, match=r"\(every copy failed its sha256 check\).*sha256 mismatch") as info:
        data.fetch("mnist", mirrors=[truncated.as_uri()])
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in (data_copy / "mnist").iterdir()) == []   # no final, no temporary
    # A download interrupted half-way (the connection drops): nothing lands either.
    real_urlopen = data.urllib.request.urlopen

    class Dropping:
        def __init__(self, resp):
            self.resp, self.served = resp, 0

        def read(self, n):
            if self.served:
                raise ConnectionResetError("connection reset by peer")
            self.served = 1
            return self.resp.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.resp.close()

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: Dropping(real_urlopen(url)))
    with pytest.raises(data.DataError, match="ConnectionResetError"):
        data.fetch("mnist", mirrors=[(tmp_path / "mirror").as_uri()])
    assert list((data_copy / "mnist").iterdir()) == []
    monkeypatch.setattr(data.urllib.request, "urlopen", real_urlopen)
    # With a good mirror: verified, in place, and a second call downloads nothing.
    assert data.fetch("mnist", mirrors=[(tmp_path / "mirror").as_uri()], progress=True) == data_copy / "mnist"
    assert data.is_fetched("mnist") and data.load("mnist").x_train.shape == (3, 28, 28)
    assert sorted(p.name for p in (data_copy / "mnist").iterdir()) == sorted(manifest["fetch"]["mnist"]["files"])
    monkeypatch.setattr(data, "_download_verified", lambda *a, **k: pytest.fail("downloaded again"))
    data.fetch("mnist", mirrors=["http://127.0.0.1:9/nowhere"])


def test_missing_fetched_set_names_the_command_and_size(data_copy):
    with pytest.raises(data.DataError, match=r"python -m course_lib\.data fetch mnist` \(needs the internet, 12 MB\)"):
        data.load("mnist")
    assert data.download_size("mnist") == 9912422 + 28881 + 1648877 + 4542
    assert data.FETCHABLE == ("mnist", "fashion_mnist") and not data.is_fetched("fashion_mnist")
    with pytest.raises(data.DataError, match="unknown dataset to fetch 'mnits'"):
        data.is_fetched("mnits")


@pytest.mark.parametrize("fraction", [0.0, 1.0, float("nan"), "0.2", True, -0.1])
def test_stratified_split_refuses_a_bad_fraction_by_name(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        data.stratified_split(np.array([0, 1, 0, 1]), fraction)


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0]), np.array([[0, 1]]), np.array(["a", "b"])])
def test_stratified_split_refuses_labels_that_are_not_1d_integers(labels):
    with pytest.raises(ValueError, match="labels"):
        data.stratified_split(labels, 0.5)


def test_binarized_mnist_protocol_fixed_test_bits_and_training_intensities():
    a, b = data.load_binarized_mnist(), data.load_binarized_mnist()
    plain = data.load("mnist_small")
    assert np.array_equal(a.test_bits, b.test_bits)                  # the same bits every run
    assert set(np.unique(a.test_bits)) <= {0.0, 1.0} and a.test_bits.dtype == np.float32
    assert np.array_equal(a.train_probs, plain.x_train) and np.array_equal(a.y_test, plain.y_test)
    # the bits are a Bernoulli draw of the intensities: mean bit matches mean intensity,
    # pixels at 0 never light and pixels at 1 always do
    assert abs(a.test_bits.mean() - plain.x_test.mean()) < 0.005
    assert not a.test_bits[plain.x_test == 0].any() and a.test_bits[plain.x_test == 1].all()
    assert "dynamic" in a.protocol and str(data.BINARIZE_SEED) in a.protocol and a.source == "mnist_small"


def test_binarize_fixed_is_reproducible_and_checks_its_input():
    x = np.full((3, 4, 4), 0.5, np.float32)
    assert np.array_equal(data.binarize_fixed(x), data.binarize_fixed(x))
    assert not np.array_equal(data.binarize_fixed(x, seed=1), data.binarize_fixed(x, seed=2))
    for bad in (x + 1.0, x * np.nan, np.array([["a"]])):
        with pytest.raises(ValueError, match="images"):
            data.binarize_fixed(bad)
    with pytest.raises(ValueError, match="source"):
        data.load_binarized_mnist("cifar")
