"""CIFAR-FS (Bertinetto et al., 2019) and FC100 (Oreshkin et al., 2018): few-shot CIFAR-100.

Both read CIFAR-100 from its standard python release, ``<root>/cifar-100-python/{train,test,meta}``
(`root`: `task.root`, else METARUN_DATA, else ./data; `download=true` fetches it with
torchvision's URL and checksum). The 500 train and 100 test images of each class are pooled
(600 per class) and the classes are split as in the papers:

  CIFAR-FS  64 / 16 / 20 classes picked at random by Bertinetto et al. (the lists of their
            r2d2 code, below).
  FC100     by superclass, 12 / 4 / 4 superclasses (60 / 20 / 20 classes), as in Oreshkin et
            al.'s TADAM, so test classes are semantically far from the training ones.

The per-split pickle files some repositories distribute (CIFAR_FS_train.pickle, ...) are not read.
Images are 32x32 RGB (resized to `image_size` if set otherwise); input float in [0, 1].
"""
import pickle

import numpy as np
import torch
from torchvision.datasets import CIFAR100

from metarun.config import DataError
from metarun.tasks.images import ImageTaskFamily, cached, data_root, download, fingerprint, group_by_class, resize, select_classes

# Bertinetto et al. (2019), CIFAR-FS.
CIFAR_FS_TRAIN = [
    "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can", "castle",
    "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur", "dolphin", "elephant",
    "forest", "girl", "hamster", "house", "kangaroo", "keyboard", "lawn_mower", "lion", "lizard", "lobster",
    "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train", "trout", "tulip", "turtle",
    "willow_tree", "wolf",
]
CIFAR_FS_VAL = [
    "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp", "maple_tree",
    "motorcycle", "otter", "sea", "shark", "television", "tractor",
]
CIFAR_FS_TEST = [
    "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket",
    "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm",
]

# Oreshkin et al. (2018), FC100: CIFAR-100 superclasses (coarse labels 1-6, 9, 10, 15, 17-19 / 8,
# 11, 13, 16 / 0, 7, 12, 14).
FC100_TRAIN = [
    "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
    "trees", "vehicles_1", "vehicles_2",
]
FC100_VAL = ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"]
FC100_TEST = ["aquatic_mammals", "insects", "medium_mammals", "people"]


def unpickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # the files were written by Python 2
    except Exception as e:
        raise DataError(f"cannot read CIFAR-100 file {path}: {type(e).__name__}: {e}") from None


def read_cifar100(folder, image_size):
    """train + test pooled, grouped by fine label: uint8 (60000, 3, S, S), counts, names, superclass of each class."""
    meta = unpickle(folder / "meta")
    parts = [unpickle(folder / name) for name in ("train", "test")]
    try:
        images = np.concatenate([np.asarray(p["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for p in parts])
        fine = np.concatenate([p["fine_labels"] for p in parts])
        coarse = np.concatenate([p["coarse_labels"] for p in parts])
        names, coarse_names = list(meta["fine_label_names"]), list(meta["coarse_label_names"])
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{folder} is not the CIFAR-100 python release ({type(e).__name__}: {e})") from None
    superclass = {int(f): coarse_names[int(c)] for f, c in zip(fine, coarse)}
    grouped, counts = group_by_class(torch.from_numpy(images), torch.from_numpy(fine))
    grouped = torch.cat([resize(chunk, image_size) for chunk in grouped.split(2000)])
    return {"images": grouped.contiguous(), "counts": counts, "classes": names,
            "superclasses": [superclass.get(i, "") for i in range(len(names))]}


class CIFARFS(ImageTaskFamily):
    """CIFAR-FS; FC100 differs only in `class_splits`."""

    def __init__(self, ways=5, shots=1, query=15, image_size=32, root=None, download=False, cache_dir=None, device="cpu"):
        super().__init__(ways, shots, query, image_size, channels=3, device=device)
        root = data_root(root)
        folder = root / "cifar-100-python"
        sources = [folder / name for name in ("train", "test", "meta")]
        if download and not all(f.is_file() for f in sources):
            download_cifar100(root)
        if not all(f.is_file() for f in sources):
            raise DataError(
                f"CIFAR-100 not found: expected {folder}/train, test and meta (the python release, "
                f"cifar-100-python.tar.gz); set task.download=true to fetch it, or point task.root or "
                f"METARUN_DATA at the folder that contains cifar-100-python/")
        data = cached(cache_dir, "cifar100", {"root": str(folder.resolve()), "image_size": image_size},
                      fingerprint(sources), lambda: read_cifar100(folder, image_size))
        self.classes = data["classes"]
        splits = {}
        for split, keep in self.class_splits(data).items():
            splits[split] = select_classes(data["images"], data["counts"], keep)
        self.set_splits(splits)

    def class_splits(self, data):
        return {"train": self.indices(CIFAR_FS_TRAIN), "val": self.indices(CIFAR_FS_VAL), "test": self.indices(CIFAR_FS_TEST)}

    def indices(self, names):
        missing = [n for n in names if n not in self.classes]
        if missing:
            raise DataError(f"CIFAR-100 meta has no classes {', '.join(missing[:5])}: not the CIFAR-100 python release")
        return [self.classes.index(n) for n in names]


class FC100(CIFARFS):
    def class_splits(self, data):
        def of(superclasses):
            missing = set(superclasses) - set(data["superclasses"])
            if missing:
                raise DataError(f"CIFAR-100 data has no superclasses {', '.join(sorted(missing))}: not the CIFAR-100 python release")
            return [i for i, s in enumerate(data["superclasses"]) if s in superclasses]

        return {"train": of(FC100_TRAIN), "val": of(FC100_VAL), "test": of(FC100_TEST)}


def download_cifar100(root):
    download(CIFAR100.url, root, CIFAR100.filename, CIFAR100.tgz_md5)
