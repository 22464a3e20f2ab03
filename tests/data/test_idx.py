"""MNIST-format (IDX) datasets read from tiny files written here, gzipped and not."""

import gzip
import struct

import numpy as np
import pytest

from rsvision.errors import UserError
from rsvision.registry import DATASETS


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian sizes, then the values."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path, data: bytes, zipped: bool) -> None:
    if zipped:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_split(root, prefix: str, images: np.ndarray, labels: np.ndarray, zipped: bool) -> None:
    write(root / f"{prefix}-images-idx3-ubyte", idx_bytes(images), zipped)
    write(root / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels), zipped)


def make_root(tmp_path, zipped=True, n_train=12, n_val=6, side=5):
    """Image i is filled with the value 10 * i, so a sample tells which image it came from."""
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images = np.repeat(np.arange(n) * 10, side * side).reshape(n, side, side)
        make_split(tmp_path, prefix, images, np.arange(n) % 10, zipped)
    return tmp_path


def build(root, **args):
    return DATASETS.build("mnist", root=str(root), **args)


@pytest.mark.parametrize("zipped", [True, False])
def test_reads_both_splits_as_grey_images(tmp_path, zipped):
    root = make_root(tmp_path, zipped)
    train, val = build(root, split="train"), build(root, split="val")
    assert (len(train), len(val)) == (12, 6)
    image, label = train[7]
    assert image.mode == "L" and image.size == (5, 5)
    assert np.asarray(image).min() == np.asarray(image).max() == 70 and label == 7
    assert val[5][1] == 5 and train.classes == [str(d) for d in range(10)]


def test_fashion_names_and_own_names(tmp_path):
    root = make_root(tmp_path)
    fashion = build(root, names="fashion")
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"
    assert len(build(root, names=[f"c{i}" for i in range(10)]).classes) == 10
    with pytest.raises(UserError, match="data.args.names: expected digits or fashion"):
        build(root, names="letters")


def test_first_n_or_a_seeded_subset(tmp_path):
    root = make_root(tmp_path)
    first = build(root, split="train", train_size=4)
    assert [first[i][1] for i in range(4)] == [0, 1, 2, 3]
    assert len(build(root, split="val", val_size=3)) == 3
    a, b = build(root, train_size=5, subset_seed=1), build(root, train_size=5, subset_seed=1)
    picked = [int(np.asarray(a[i][0])[0, 0]) // 10 for i in range(5)]
    assert picked == [int(np.asarray(b[i][0])[0, 0]) // 10 for i in range(5)]
    assert picked == sorted(picked) and picked != [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match=r"data.args.train_size: expected 1 to 12 .*got 13"):
        build(root, train_size=13)


def image_ids(dataset) -> list[int]:
    return [int(np.asarray(dataset[i][0])[0, 0]) // 10 for i in range(len(dataset))]


def test_validation_held_out_from_the_training_file(tmp_path):
    root = make_root(tmp_path)
    args = dict(train_size=5, val_size=4, val_from="train")
    train, val = build(root, split="train", **args), build(root, split="val", **args)
    assert image_ids(train) == [0, 1, 2, 3, 4] and image_ids(val) == [5, 6, 7, 8]
    seeded = dict(args, subset_seed=3)
    train_ids, val_ids = image_ids(build(root, **seeded)), image_ids(build(root, split="val", **seeded))
    assert len(set(train_ids) | set(val_ids)) == 9 and val_ids == sorted(val_ids)
    assert train_ids == image_ids(build(root, train_size=5, subset_seed=3))  # the training subset is unchanged
    assert image_ids(build(root, split="val", val_size=4)) == [0, 1, 2, 3]  # by default val is the test file
    with pytest.raises(UserError, match=r"data.args.val_size: 5 training \+ 8 held-out images exceed the 12 samples"):
        build(root, split="val", train_size=5, val_size=8, val_from="train")
    with pytest.raises(UserError, match="data.args.val_from: expected 'test' or 'train', got 'holdout'"):
        build(root, split="val", val_from="holdout")


def test_uncompressed_file_is_preferred_and_gzip_is_detected_by_content(tmp_path):
    root = make_root(tmp_path, zipped=False)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not read")
    assert len(build(root, split="val")) == 6
    # a gzipped file without the .gz suffix still reads
    plain = root / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.compress(plain.read_bytes()))
    assert build(root, split="val")[3][1] == 3


def test_missing_root_and_files(tmp_path):
    with pytest.raises(UserError, match="data.root: the mnist dataset needs"):
        DATASETS.build("mnist", split="train")
    make_root(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte: file not found, gzipped \(\.gz\) or not"):
        build(tmp_path, split="val")
    with pytest.raises(UserError, match="unknown split 'test'"):
        build(tmp_path, split="test")


def test_corrupt_files_are_named(tmp_path):
    root = make_root(tmp_path, zipped=False)
    images = root / "train-images-idx3-ubyte"
    labels = root / "train-labels-idx1-ubyte"
    good_images, good_labels = images.read_bytes(), labels.read_bytes()

    images.write_bytes(good_labels)  # a 1-d file where a 3-d one belongs
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: not an IDX file of 3-d unsigned bytes \(magic number 00000801, expected 00000803\)"):
        build(root)
    images.write_bytes(b"")
    with pytest.raises(UserError, match="magic number missing"):
        build(root)
    images.write_bytes(good_images[:-3])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: the header promises 12 x 5 x 5 = 300 values, the file holds 297"):
        build(root)
    images.write_bytes(good_images[:10])
    with pytest.raises(UserError, match="truncated header"):
        build(root)
    images.write_bytes(gzip.compress(good_images)[:-8])
    with pytest.raises(UserError, match="train-images-idx3-ubyte: cannot decompress"):
        build(root)
    images.write_bytes(good_images)

    labels.write_bytes(idx_bytes(np.arange(11) % 10))
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte: 11 labels for the 12 images of .*train-images-idx3-ubyte"):
        build(root)
    labels.write_bytes(idx_bytes(np.array([0, 1, 2, 12] + [0] * 8)))
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte: label 12 at index 3 is out of range for 10 classes"):
        build(root)
    assert len(build(root, names=[str(i) for i in range(13)])) == 12
