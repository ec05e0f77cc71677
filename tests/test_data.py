"""Data sources, the seeded split, decoding and resizing."""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tle.contract.records import ImageSet
from tle.data import SPLITS, load_dataset
from tle.data.images import load_image, resize_batch, to_channels
from tle.data.split import stratified_split
from tle.errors import UserError
from tle.contract.spec import DataSpec


def spec(source="digits", **kw) -> DataSpec:
    return DataSpec(source=source, **kw)


def per_class(ds, split):
    return np.bincount(ds.split(split)[1], minlength=ds.num_classes).tolist()


def all_indices(ds):
    return np.concatenate([ds.indices[s] for s in SPLITS])


# -- digits and the split ---------------------------------------------------------


def test_digits_subset_relabelled_with_sklearn_counts():
    target = load_digits().target
    ds = load_dataset(spec("digits:0-4"), seed=0)
    assert ds.class_names == ["0", "1", "2", "3", "4"]
    assert ds.input_shape == (8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.max() > 0.9
    counts = np.bincount(np.concatenate([ds.split(s)[1] for s in SPLITS]), minlength=5)
    assert counts.tolist() == np.bincount(target[target < 5]).tolist()


def test_digits_upper_half_names_and_images():
    bunch = load_digits()
    ds = load_dataset(spec("digits:5-9", val=0.0, test=0.0), seed=0)
    assert ds.class_names == ["5", "6", "7", "8", "9"]
    mask = bunch.target >= 5
    # Indices are positions in the selected digits, in sklearn's order.
    np.testing.assert_allclose(ds.x_train[..., 0], bunch.images[mask][ds.indices["train"]] / 16.0, atol=1e-6)
    assert (ds.y_train == bunch.target[mask][ds.indices["train"]] - 5).all()


def test_digits_class_list():
    ds = load_dataset(spec("digits:7,0,3"), seed=0)
    assert ds.class_names == ["0", "3", "7"]


def test_same_seed_same_split_and_other_seed_differs():
    a = load_dataset(spec("digits:0-4", train=20, val=5, test=5), seed=3)
    b = load_dataset(spec("digits:0-4", train=20, val=5, test=5), seed=3)
    c = load_dataset(spec("digits:0-4", train=20, val=5, test=5), seed=4)
    for s in SPLITS:
        np.testing.assert_array_equal(a.indices[s], b.indices[s])
        np.testing.assert_array_equal(a.split(s)[0], b.split(s)[0])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert not np.array_equal(a.indices["train"], c.indices["train"])
    # spec.seed wins over the seed argument.
    d = load_dataset(spec("digits:0-4", train=20, val=5, test=5, seed=3), seed=99)
    assert d.fingerprint() == a.fingerprint()


def test_fingerprint_identical_in_another_process():
    code = (
        "from tle.data import load_dataset; from tle.contract.spec import DataSpec; "
        "print(load_dataset(DataSpec(source='digits:0-4', train=20, val=5, test=5), seed=3).fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = load_dataset(spec("digits:0-4", train=20, val=5, test=5), seed=3).fingerprint()
    assert out.stdout.strip() == here


def test_counts_per_class_are_exact_and_disjoint():
    ds = load_dataset(spec("digits", train=20, val=5, test=5), seed=0)
    assert per_class(ds, "train") == [20] * 10
    assert per_class(ds, "val") == [5] * 10
    assert per_class(ds, "test") == [5] * 10
    idx = all_indices(ds)
    assert len(np.unique(idx)) == len(idx) == 300


def test_fractions_round_per_class_and_rest_covers_everything():
    target = load_digits().target
    ds = load_dataset(spec("digits", val=0.1, test=0.25), seed=0)
    n = np.bincount(target)
    assert per_class(ds, "test") == np.floor(0.25 * n + 0.5).astype(int).tolist()
    assert per_class(ds, "val") == np.floor(0.1 * n + 0.5).astype(int).tolist()
    idx = all_indices(ds)
    assert sorted(idx.tolist()) == list(range(len(target)))


def test_split_is_shuffled_not_grouped_by_class():
    ds = load_dataset(spec("digits:0-4"), seed=0)
    assert (np.diff(ds.y_train) != 0).sum() > 50


def test_max_per_class_and_fraction_of_what_is_kept():
    ds = load_dataset(spec("digits", max_per_class=50, val=0.2, test=0.2), seed=0)
    assert per_class(ds, "train") == [30] * 10
    assert per_class(ds, "val") == per_class(ds, "test") == [10] * 10


def test_stratified_split_function_and_too_few_error():
    labels = np.repeat([0, 1, 2], [10, 6, 8])
    idx = stratified_split(labels, train=None, val=2, test=0.25, seed=1)
    # 0.25 * 10 = 2.5 rounds half up to 3.
    assert [np.bincount(labels[idx[s]], minlength=3).tolist() for s in ("train", "val", "test")] == [
        [5, 2, 4], [2, 2, 2], [3, 2, 2]]
    with pytest.raises(UserError, match=r"class '1' has 6 images .*val=5.*= 10"):
        stratified_split(labels, train=None, val=5, test=5, seed=1, class_names=["a", "1", "c"])


def test_too_few_images_for_requested_count():
    with pytest.raises(UserError, match="class '0' has .* requested"):
        load_dataset(spec("digits", train=500, val=5, test=5), seed=0)


def test_resize_and_channels_for_digits():
    ds = load_dataset(spec("digits:0-1", image_size=32, channels=3), seed=0)
    assert ds.input_shape == (32, 32, 3)
    assert 0.0 <= ds.x_val.min() and ds.x_val.max() <= 1.0
    np.testing.assert_array_equal(ds.x_val[..., 0], ds.x_val[..., 2])


# -- images ------------------------------------------------------------------------


@pytest.mark.parametrize("src, dst", [((8, 8), (32, 32)), ((37, 23), (16, 16)), ((20, 24), (13, 40))])
def test_resize_batch_matches_pillow_bilinear(src, dst):
    images = np.random.default_rng(0).random((2, *src, 3), dtype=np.float32)
    out = resize_batch(images, dst)
    assert out.shape == (2, *dst, 3)
    ref = np.asarray(Image.fromarray(images[1, ..., 2], "F").resize(dst[::-1], Image.BILINEAR))
    np.testing.assert_allclose(out[1, ..., 2], ref, atol=1e-5)
    assert resize_batch(images, src) is images


def test_to_channels():
    rgb = np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32)
    gray = to_channels(rgb, 1)
    assert gray.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(gray[..., 0], rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-6)
    assert (to_channels(gray, 3) == gray).all()


def test_load_image_unreadable(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.png"):
        load_image(bad, None, None)


# -- folder ------------------------------------------------------------------------


def _save(path, size, colour, mode="RGB", fmt=None):
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    h, w = size
    if mode == "L":
        arr = np.full((h, w), colour[0], np.uint8)
    else:
        arr = np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()
    arr = np.clip(arr.astype(int) + rng.integers(-5, 5, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, fmt)


def make_folder(root, classes=("cat", "dog"), per=6):
    colours = {"cat": (220, 30, 30), "dog": (30, 30, 220), "owl": (30, 220, 30)}
    for name in classes:
        for i in range(per):
            suffix = ".png" if i % 2 else ".jpg"
            _save(root / name / f"{i:02d}{suffix}", (20 + 4 * (i % 3), 24), colours[name])
    return root


def test_folder_skips_bad_files_resizes_and_converts(tmp_path):
    root = make_folder(tmp_path / "pets")
    _save(root / "cat" / "gray.png", (30, 30), (128,), mode="L")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "bad.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    ds = load_dataset(spec(f"folder:{root}", image_size=16, train=4, val=1, test=1), seed=0)
    assert ds.skipped == 2
    assert ds.class_names == ["cat", "dog"]
    assert ds.input_shape == (16, 16, 3)  # one colour image is enough for RGB
    assert per_class(ds, "train") == [4, 4]
    cats = ds.x_train[ds.y_train == 0].mean(axis=(0, 1, 2))
    assert cats[0] > 0.6 > cats[2]  # red stays red: channels are in RGB order
    gray = load_dataset(spec(f"folder:{root}", image_size=12, channels=1), seed=0)
    assert gray.input_shape == (12, 12, 1)
    assert sum(gray.sizes().values()) == 13


def test_folder_defaults_to_first_image_size_and_gray(tmp_path):
    for name in ("a", "b"):
        for i in range(4):
            _save(tmp_path / name / f"{i}.png", (10 + i, 14), (40 if name == "a" else 200,), mode="L")
    ds = load_dataset(spec(f"folder:{tmp_path}", val=0.25, test=0.25), seed=0)
    assert ds.input_shape == (10, 14, 1)
    assert ds.skipped == 0


def test_folder_truncated_image_is_skipped_after_header_check(tmp_path):
    root = make_folder(tmp_path / "pets")
    full = (root / "cat" / "00.jpg").read_bytes()
    (root / "cat" / "99.jpg").write_bytes(full[: len(full) // 2])
    ds = load_dataset(spec(f"folder:{root}", image_size=8, val=0.0, test=0.0), seed=0)
    assert ds.skipped == 1
    assert per_class(ds, "train") == [6, 6]
    assert sorted(ds.indices["train"].tolist()) == list(range(12))


def test_folder_with_given_splits(tmp_path):
    make_folder(tmp_path / "train", per=6)
    make_folder(tmp_path / "val", per=2)
    make_folder(tmp_path / "test", per=3)
    ds = load_dataset(spec(f"folder:{tmp_path}", image_size=8), seed=0)
    assert ds.class_names == ["cat", "dog"]
    assert ds.sizes() == {"train": 12, "val": 4, "test": 6}
    # Source order is train files, then val, then test.
    assert sorted(ds.indices["val"].tolist()) == list(range(12, 16))
    assert sorted(ds.indices["test"].tolist()) == list(range(16, 22))
    # Without val/, the validation split is cut from train/.
    (tmp_path / "val").rename(tmp_path / "unused")
    ds = load_dataset(spec(f"folder:{tmp_path}", image_size=8, val=2), seed=0)
    assert ds.sizes() == {"train": 8, "val": 4, "test": 6}
    assert set(ds.indices["val"]) < set(range(12))


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(spec(f"folder:{tmp_path / 'missing'}"), seed=0)
    with pytest.raises(UserError, match="no class subfolders"):
        load_dataset(spec(f"folder:{tmp_path}"), seed=0)
    make_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="empty has no readable images"):
        load_dataset(spec(f"folder:{tmp_path}"), seed=0)


# -- npz, plugins, built-in sets --------------------------------------------------------


def test_npz_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 6, 5), dtype=np.uint8)
    y = np.repeat([0, 1, 2, 3], 10)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, class_names=np.array(["w", "x", "y", "z"]))
    ds = load_dataset(spec(f"npz:{path}", train=6, val=2, test=2), seed=0)
    assert ds.class_names == ["w", "x", "y", "z"]
    assert ds.input_shape == (6, 5, 1)
    for s in SPLITS:
        np.testing.assert_allclose(ds.split(s)[0][..., 0], x[ds.indices[s]] / 255.0, atol=1e-6)
        assert (ds.split(s)[1] == y[ds.indices[s]]).all()


def test_npz_given_test_split_and_arbitrary_label_ids(tmp_path):
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).random((30, 4, 4, 3), dtype=np.float32)
    np.savez(path, x_train=x[:20], y_train=np.repeat([3, 7], 10), x_test=x[20:], y_test=np.repeat([3, 7], 5))
    ds = load_dataset(spec(f"npz:{path}"), seed=0)
    assert ds.class_names == ["3", "7"]
    assert sorted(ds.indices["test"].tolist()) == list(range(20, 30))
    assert ds.sizes() == {"train": 16, "val": 4, "test": 10}
    np.testing.assert_array_equal(ds.x_test, x[20:][ds.indices["test"] - 20])


def test_npz_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(spec(f"npz:{tmp_path / 'nope.npz'}"), seed=0)
    np.savez(tmp_path / "k.npz", pixels=np.zeros((2, 4, 4)))
    with pytest.raises(UserError, match="not the expected arrays"):
        load_dataset(spec(f"npz:{tmp_path / 'k.npz'}"), seed=0)
    np.savez(tmp_path / "f.npz", x=np.full((4, 4, 4), 200.0), y=[0, 0, 1, 1])
    with pytest.raises(UserError, match=r"not \[0, 1\]"):
        load_dataset(spec(f"npz:{tmp_path / 'f.npz'}"), seed=0)


def test_extra_source_from_plugin():
    def loader(argument, data_spec):
        n = int(argument)
        return ImageSet(np.zeros((2 * n, 5, 5, 3), np.float32), np.repeat([0, 1], n), ("no", "yes"))

    ds = load_dataset(spec("mine:10", image_size=7, channels=1), seed=0, extra_sources={"mine": loader})
    assert ds.class_names == ["no", "yes"] and ds.input_shape == (7, 7, 1)
    with pytest.raises(UserError, match=r"unknown dataset source 'other:1'.*digits.*mine:"):
        load_dataset(spec("other:1"), seed=0, extra_sources={"mine": loader})
    # The loader's answer is a typed record; a bare tuple is one line saying so.
    with pytest.raises(UserError, match=r"returned a tuple.*ImageSet"):
        load_dataset(spec("old:1"), seed=0, extra_sources={"old": lambda a, s: (np.zeros((2, 5, 5, 3)), [0, 1], None)})


def test_builtin_sources_come_through_the_hook_like_a_plugins():
    from tle.backends.manager import load_backend

    sources = load_backend("numpy").dataset_sources()
    assert {"digits", "synthetic", "folder", "npz", "mnist"} <= set(sources)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_HOME", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return tmp_path / ".keras" / "datasets"


def test_builtin_offline_error_names_file_and_url(keras_home):
    with pytest.raises(UserError) as err:
        load_dataset(spec("mnist"), seed=0)
    msg = str(err.value)
    assert str(keras_home / "mnist.npz") in msg
    assert "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz" in msg
    with pytest.raises(UserError, match="cifar-10-python.tar.gz"):
        load_dataset(spec("cifar10"), seed=0)


def test_builtin_mnist_from_cache(keras_home):
    keras_home.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(keras_home / "mnist.npz",
             x_train=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), y_train=np.arange(50) % 10,
             x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y_test=np.arange(20) % 10)
    ds = load_dataset(spec("mnist", image_size=32), seed=0)
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.input_shape == (32, 32, 1)
    assert ds.sizes() == {"train": 40, "val": 10, "test": 20}


def test_builtin_fashion_and_cifar10_from_cache(keras_home):
    folder = keras_home / "fashion-mnist"
    folder.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 10)):
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes(8) + bytes(np.arange(n, dtype=np.uint8) % 10))
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(bytes(16) + bytes(n * 28 * 28))
    ds = load_dataset(spec("fashion_mnist", val=0.0), seed=0)
    assert ds.sizes() == {"train": 30, "val": 0, "test": 10} and ds.class_names[-1] == "Ankle boot"

    cifar = keras_home / "cifar-10-batches-py-target" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = np.zeros((10, 3072), np.uint8)
        data[:, :1024] = 255  # red plane first, as in the real files
        with open(cifar / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(range(10))}, f, protocol=2)
    ds = load_dataset(spec("cifar10", val=0.0), seed=0)
    assert ds.sizes() == {"train": 50, "val": 0, "test": 10} and ds.class_names[0] == "airplane"
    assert ds.input_shape == (32, 32, 3)
    assert (ds.x_train[..., 0] == 1.0).all() and (ds.x_train[..., 1:] == 0.0).all()


# -- synthetic -------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_independent_of_split_seed():
    a = load_dataset(spec("synthetic"), seed=0)
    b = load_dataset(spec("synthetic"), seed=0)
    c = load_dataset(spec("synthetic"), seed=1)
    assert a.class_names == ["class0", "class1", "class2", "class3"]
    assert a.input_shape == (32, 32, 3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.fingerprint() != c.fingerprint()
    # The same sample is the same image whichever split seed put it where.
    both = np.intersect1d(a.indices["train"], c.indices["train"])[:5]
    pos = lambda ds, i: int(np.flatnonzero(ds.indices["train"] == i)[0])  # noqa: E731
    for i in both:
        np.testing.assert_array_equal(a.x_train[pos(a, i)], c.x_train[pos(c, i)])


def test_synthetic_is_learnable():
    from sklearn.linear_model import LogisticRegression

    ds = load_dataset(spec("synthetic", synthetic={"classes": 4, "per_class": 60, "size": 16, "channels": 1}), seed=0)
    clf = LogisticRegression(max_iter=500).fit(ds.x_train.reshape(len(ds.x_train), -1), ds.y_train)
    assert clf.score(ds.x_test.reshape(len(ds.x_test), -1), ds.y_test) > 0.8


# -- user errors -------------------------------------------------------------------------


@pytest.mark.parametrize("classes", ["3-12", "x", "5", "4-2", "1,,2"])
def test_bad_digit_classes(classes):
    with pytest.raises(UserError, match="digits:0-4"):
        load_dataset(spec(f"digits:{classes}"), seed=0)


def test_unknown_source_lists_known_ones():
    with pytest.raises(UserError, match="unknown dataset source 'imagenet'.*folder:PATH"):
        load_dataset(spec("imagenet"), seed=0)


def _idx_gz(path, header: int, payload: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(bytes(header) + payload.astype(np.uint8).tobytes())


def test_builtin_emnist_letters_from_cache_transposed_and_selected(keras_home):
    folder = keras_home / "emnist"
    folder.mkdir(parents=True)
    for split, n in (("train", 52), ("test", 26)):
        labels = np.arange(n) % 26 + 1  # NIST numbers the letters 1..26
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 5] = 255  # stored transposed: this pixel is row 5, column 0 once read
        _idx_gz(folder / f"emnist-letters-{split}-labels-idx1-ubyte.gz", 8, labels)
        _idx_gz(folder / f"emnist-letters-{split}-images-idx3-ubyte.gz", 16, images)
    ds = load_dataset(spec("emnist_letters", val=0.0), seed=0)
    assert ds.class_names[:3] == ["a", "b", "c"] and len(ds.class_names) == 26
    assert ds.sizes() == {"train": 52, "val": 0, "test": 26}
    assert ds.x_train[0, 5, 0, 0] == 1.0 and ds.x_train[0, 0, 5, 0] == 0.0

    ten = load_dataset(spec("emnist_letters:a-j", val=0.0), seed=0)
    assert ten.class_names == list("abcdefghij")
    assert ten.sizes() == {"train": 20, "val": 0, "test": 10}
    assert sorted(set(ten.y_test.tolist())) == list(range(10))
    picked = load_dataset(spec("emnist_letters:x,2", val=0.0), seed=0)
    assert picked.class_names == ["c", "x"]  # names or indices, in the source's order
    with pytest.raises(UserError, match=r"bad classes 'a-zz'.*its classes: a, b, c"):
        load_dataset(spec("emnist_letters:a-zz"), seed=0)


def test_builtin_class_selection_keeps_the_given_split(keras_home):
    keras_home.mkdir(parents=True)
    np.savez(keras_home / "mnist.npz", x_train=np.zeros((50, 28, 28), np.uint8), y_train=np.arange(50) % 10,
             x_test=np.zeros((20, 28, 28), np.uint8), y_test=np.arange(20) % 10)
    ds = load_dataset(spec("mnist:5-9", val=0.0), seed=0)
    assert ds.class_names == ["5", "6", "7", "8", "9"]
    assert ds.sizes() == {"train": 25, "val": 0, "test": 10}


def test_builtin_emnist_offline_error_names_the_files(keras_home):
    with pytest.raises(UserError) as err:
        load_dataset(spec("emnist_letters:a-j"), seed=0)
    msg = str(err.value)
    assert "emnist-letters-train-images-idx3-ubyte.gz" in msg and "biometrics.nist.gov" in msg


PRINTED_LETTERS = Path(__file__).resolve().parents[1] / "examples" / "printed_letters.py"


def test_printed_letters_example_is_a_ten_class_folder_source(tmp_path):
    # examples/printed_letters.py: S2's digits -> letters pair offline (README, S2). Same seed, same images.
    script = [sys.executable, str(PRINTED_LETTERS)]
    for out in ("a", "b"):
        subprocess.run([*script, str(tmp_path / out), "--per-class", "6"], check=True, capture_output=True)
    ds = load_dataset(spec(f"folder:{tmp_path / 'a'}", image_size=28, channels=1, val=1, test=1), seed=0)
    assert list(ds.class_names) == list("ABCDEFGHIJ") and per_class(ds, "train") == [4] * 10
    first = [np.asarray(Image.open(tmp_path / d / "C" / "0003.png")) for d in ("a", "b")]
    assert first[0].shape == (28, 28) and first[0].max() > 128 and (first[0] == first[1]).all()


def test_printed_letters_emnist_style_is_fitted_and_centred_like_mnist(tmp_path):
    # The default style: each glyph in a 20 px box, centred by its centre of mass in 28 px, with about MNIST's
    # ink (0.135 mean intensity); `--style plain` is the earlier, thinner set (README, S2).
    script = [sys.executable, str(PRINTED_LETTERS)]
    for style in ("emnist", "plain"):
        subprocess.run([*script, str(tmp_path / style), "--per-class", "3", "--style", style], check=True,
                       capture_output=True)
    ink = {s: np.stack([np.asarray(Image.open(f), np.float64) / 255 for f in sorted((tmp_path / s).glob("*/*.png"))])
           for s in ("emnist", "plain")}
    assert 0.10 < ink["emnist"].mean() < 0.30 and ink["plain"].mean() < 0.10
    grid = np.arange(28)
    for image in ink["emnist"]:
        rows, cols = np.nonzero(image > 0)
        assert max(np.ptp(rows), np.ptp(cols)) + 1 <= 20
        cy = (grid * image.sum(axis=1)).sum() / image.sum()
        cx = (grid * image.sum(axis=0)).sum() / image.sum()
        assert abs(cy - 13.5) < 1.5 and abs(cx - 13.5) < 1.5
