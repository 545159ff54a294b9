import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from vtrain.data.cifar import CIFAR, load_cifar_pickle
from vtrain.data.safe_pickle import RefusedPickleError, load_data_pickle


def test_real_cifar10_reads_truncated_batches(shared):
    root = shared("cifar10")
    # batches.meta claims 10000 rows per batch; the real files hold 1000 each.
    assert load_cifar_pickle(root / "cifar-10-batches-py" / "batches.meta")["num_cases_per_batch"] == 10000
    train, test = CIFAR(root, "train"), CIFAR(root, "test")

    assert (len(train), len(test)) == (5000, 1000)
    assert train.images.shape == (5000, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.classes[:3] == ["airplane", "automobile", "bird"] and len(train.classes) == 10
    assert train.targets.min() == 0 and train.targets.max() == 9
    assert set(np.unique(test.targets)) == set(range(10))


def test_real_cifar10_pixels_follow_the_row_layout(shared):
    root = shared("cifar10")
    raw = pickle.loads((root / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="bytes")
    image, label = CIFAR(root, "test")[7]

    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert label == raw[b"labels"][7]
    # A row holds 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    row = raw[b"data"][7]
    for channel, y, x in [(0, 0, 0), (1, 5, 17), (2, 31, 30)]:
        assert image[channel, y, x] == row[channel * 1024 + y * 32 + x]


def test_real_cifar100_fine_and_coarse(shared):
    root = shared("cifar100")
    fine, coarse = CIFAR(root, "train", "cifar100"), CIFAR(root, "train", "cifar100", label="coarse")

    assert len(fine) == 486 and len(CIFAR(root, "test", "cifar100")) == 916
    assert (len(fine.classes), len(coarse.classes)) == (100, 20)
    assert fine.classes[0] == "apple" and coarse.classes[0] == "aquatic_mammals"
    assert np.array_equal(fine.images, coarse.images)
    # Every fine class lies inside exactly one superclass.
    pairs = set(zip(fine.targets.tolist(), coarse.targets.tolist(), strict=True))
    assert len(pairs) == len({f for f, _ in pairs})
    assert (fine.classes.index("apple"), coarse.classes.index("fruit_and_vegetables")) in pairs


def _write_cifar10(folder: Path, batch: dict, meta: dict) -> None:
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def _batch(rows: int = 4, keys=str) -> tuple[dict, dict]:
    data = np.arange(rows * 3072, dtype=np.int64).reshape(rows, 3072).astype(np.uint8)
    batch = {keys("batch_label"): keys("testing batch 1 of 1"), keys("labels"): [1, 2, 3, 4][:rows]}
    batch[keys("data")] = data
    meta = {keys("label_names"): [keys(name) for name in "abcdefghij"], keys("num_cases_per_batch"): 10000}
    return batch, meta


def test_python2_bytes_keys_and_python3_str_keys_read_the_same(tmp_path):
    _write_cifar10(tmp_path / "py3" / "cifar-10-batches-py", *_batch(keys=str))
    _write_cifar10(tmp_path / "py2" / "cifar-10-batches-py", *_batch(keys=str.encode))
    py3, py2 = CIFAR(tmp_path / "py3", "test"), CIFAR(tmp_path / "py2", "test")

    assert py3.classes == py2.classes == list("abcdefghij")
    assert np.array_equal(py3.images, py2.images) and np.array_equal(py3.targets, py2.targets)
    assert py2.targets.tolist() == [1, 2, 3, 4]
    # The batches folder itself is accepted as root too.
    assert len(CIFAR(tmp_path / "py2" / "cifar-10-batches-py", "train")) == 20


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda b: b.update(data=np.zeros((4, 3000), np.uint8)),
            "expected 'data' as an N x 3072 uint8 array, found uint8 array of shape (4, 3000)",
        ),
        (lambda b: b.update(labels=[0, 1, 2]), "expected 4 'labels' (one per data row), found 3"),
        (lambda b: b.pop("data"), "expected keys 'data' and 'labels', found keys ['batch_label', 'labels']"),
        (lambda b: b.update(labels=[0, 1, 2, 10]), "expected 'labels' in [0, 10), found [0, 10]"),
    ],
    ids=["data-shape", "label-count", "missing-key", "label-range"],
)
def test_malformed_batch_names_the_file_and_the_problem(tmp_path, damage, message):
    batch, meta = _batch()
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder, *_batch())
    damage(batch)
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch))

    with pytest.raises(ValueError, match=re.escape(f"{folder / 'data_batch_3'}: {message}")):
        CIFAR(tmp_path, "train")
    assert len(CIFAR(tmp_path, "test")) == 4


def test_missing_folder_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        CIFAR(tmp_path / "nowhere", "train", "cifar100")
    assert str(tmp_path / "nowhere" / "cifar-100-python") in str(error.value)
    assert "<root>/cifar-100-python/{train, test, meta}" in str(error.value)


def test_transform_receives_the_image(tmp_path):
    _write_cifar10(tmp_path / "cifar-10-batches-py", *_batch())
    dataset = CIFAR(tmp_path, "test", transform=lambda image: image.float().mean())
    assert dataset[0][0] == pytest.approx(np.arange(3072).astype(np.uint8).mean())


class _Payload:
    """Unpickles as ``function(*args)``: what a crafted data file runs under a plain ``pickle.load``."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (lambda marker: _Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        (lambda marker: _Payload(Path.touch, marker), "pathlib.Path.touch"),
    ],
    ids=["os.system", "Path.touch"],
)
def test_batch_that_would_run_code_is_refused_before_it_runs(tmp_path, payload, refused):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder, *_batch())
    marker = tmp_path / "payload_ran"
    batch, _ = _batch()
    batch["data"] = payload(marker)
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=4))

    with pytest.raises(RefusedPickleError) as error:
        CIFAR(tmp_path, "train")
    message = str(error.value)
    expected = f"refusing to load {folder / 'data_batch_1'}: it names the Python global {refused}, "
    assert message.startswith(expected)
    assert "the file was not loaded" in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_of_every_pickle_protocol_load(tmp_path, protocol):
    content = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "names": [b"a", "b"], "n": (1, 2.5)}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    loaded = load_data_pickle(path)
    assert np.array_equal(loaded[b"data"], content[b"data"]) and loaded[b"data"].dtype == np.uint8
    assert loaded["names"] == [b"a", "b"] and loaded["n"] == (1, 2.5)


@pytest.mark.parametrize(
    "relative",
    [
        *(f"cifar10/cifar-10-batches-py/{n}" for n in ("data_batch_1", "test_batch", "batches.meta")),
        *(f"cifar100/cifar-100-python/{n}" for n in ("train", "test", "meta")),
    ],
)
def test_real_python2_batches_load_as_plain_pickle_does(shared, relative):
    """The real files are Python 2 pickles with byte-string keys (encoding="bytes" keeps them bytes)."""
    path = shared(relative)
    expected = pickle.loads(path.read_bytes(), encoding="bytes")
    loaded = load_data_pickle(path, encoding="bytes")
    assert list(loaded) == list(expected) and all(isinstance(key, bytes) for key in loaded)
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(loaded[key], value) and loaded[key].dtype == value.dtype
        else:
            assert loaded[key] == value
