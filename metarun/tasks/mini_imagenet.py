"""mini-ImageNet few-shot classification (Vinyals et al., 2016; splits of Ravi and Larochelle, 2017).

64 train, 16 val and 20 test classes of 600 RGB images each. Two common layouts are read, from
``<root>/mini-imagenet/`` or directly from ``<root>`` (`root`: `task.root`, else METARUN_DATA,
else ./data):

  pickles   mini-imagenet-cache-{train,val,test}.pkl: a dict with "image_data", a uint8 array
            (N, 84, 84, 3), and "class_dict", {class name: [row indices]} (the files learn2learn
            and others distribute). Unpickling runs code from the file: use files you trust.
  csv       {train,val,test}.csv with columns filename,label and the images in images/ (any size;
            resized without cropping, as Ravi and Larochelle's script does).

Images are resized to `image_size` (84 by default) with antialiasing; input float in [0, 1].
There is no download: the data set has no official archive.
"""
import pickle

import numpy as np
import pandas as pd
import torch

from metarun.config import DataError
from metarun.tasks.images import SPLITS, ImageTaskFamily, cached, data_root, decode_classes, fingerprint, resize

PICKLE = "mini-imagenet-cache-{}.pkl"


def find_layout(root):
    """(folder, "pickle" | "csv") of the first place holding all three splits in one layout."""
    for folder in (root / "mini-imagenet", root):
        if all((folder / PICKLE.format(s)).is_file() for s in SPLITS):
            return folder, "pickle"
        if all((folder / f"{s}.csv").is_file() for s in SPLITS) and (folder / "images").is_dir():
            return folder, "csv"
    raise DataError(
        f"mini-ImageNet not found in {root / 'mini-imagenet'} or {root}: expected either "
        f"{PICKLE.format('{train,val,test}')} or {{train,val,test}}.csv with an images/ folder; "
        f"point task.root or METARUN_DATA at the folder that holds them (there is no download)")


def read_pickle(path, image_size):
    """One split's pickle -> class-grouped uint8 images (N, 3, S, S), counts, class names."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
        images, class_dict = np.asarray(data["image_data"]), data["class_dict"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"image_data is {images.dtype} {images.shape}, expected uint8 (N, H, W, 3)")
    except DataError:
        raise
    except Exception as e:  # not a pickle, missing keys, wrong array
        raise DataError(f"cannot read mini-ImageNet file {path}: {type(e).__name__}: {e}") from None
    names = sorted(class_dict)
    rows = [np.asarray(class_dict[c], dtype=np.int64) for c in names]
    tensor = torch.from_numpy(images[np.concatenate(rows)]).permute(0, 3, 1, 2)
    resized = torch.cat([resize(chunk, image_size) for chunk in tensor.split(1000)])
    return resized.contiguous(), torch.tensor([len(r) for r in rows]), names


def read_csv(folder, split):
    """One split's CSV -> (class names, [image paths per class])."""
    path = folder / f"{split}.csv"
    try:
        table = pd.read_csv(path, dtype=str)
        files, labels = table["filename"], table["label"]
    except Exception as e:
        raise DataError(f"cannot read {path} (expected columns filename,label): {type(e).__name__}: {e}") from None
    names = sorted(labels.unique())
    return names, [[folder / "images" / f for f in files[labels == c]] for c in names]


class MiniImageNet(ImageTaskFamily):
    def __init__(self, ways=5, shots=1, query=15, image_size=84, root=None, cache_dir=None, device="cpu"):
        super().__init__(ways, shots, query, image_size, channels=3, device=device)
        folder, layout = find_layout(data_root(root))
        if layout == "pickle":
            sources = [folder / PICKLE.format(s) for s in SPLITS]
            build = lambda: self.build_from_pickles(sources)  # noqa: E731
        else:
            listed = {s: read_csv(folder, s) for s in SPLITS}
            sources = [folder / f"{s}.csv" for s in SPLITS] + [f for s in SPLITS for fs in listed[s][1] for f in fs]
            build = lambda: self.build_from_files(listed)  # noqa: E731
        missing = next((f for f in sources if not f.is_file()), None)
        if missing is not None:
            raise DataError(f"cannot read image {missing}: listed in a mini-ImageNet CSV but missing")
        data = cached(cache_dir, "mini_imagenet", {"root": str(folder.resolve()), "layout": layout, "image_size": image_size},
                      fingerprint(sources), build)
        self.classes = data["classes"]
        shared = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if shared:
            raise DataError(f"mini-ImageNet in {folder}: classes {', '.join(shared[:5])} appear in more than one split")
        splits, start, first = {}, 0, 0
        for split in SPLITS:
            k = data["class_splits"].count(split)
            counts = data["counts"][first : first + k]
            splits[split] = (data["images"][start : start + int(counts.sum())], counts)
            start, first = start + int(counts.sum()), first + k
        self.set_splits(splits)

    def build_from_pickles(self, paths):
        parts = [read_pickle(p, self.image_size) for p in paths]
        return {"images": torch.cat([p[0] for p in parts]), "counts": torch.cat([p[1] for p in parts]),
                "classes": [c for p in parts for c in p[2]],
                "class_splits": [s for s, p in zip(SPLITS, parts) for _ in p[2]]}

    def build_from_files(self, listed):
        per_class = [fs for s in SPLITS for fs in listed[s][1]]
        return {**decode_classes(per_class, 3, self.image_size),
                "classes": [c for s in SPLITS for c in listed[s][0]],
                "class_splits": [s for s in SPLITS for _ in listed[s][0]]}
