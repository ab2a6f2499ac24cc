"""Omniglot few-shot classification (Lake et al., 2015), in the protocol of Vinyals et al. (2016)
and Finn et al. (2017).

Data: ``<root>/omniglot-py/images_background|images_evaluation/<alphabet>/<characterNN>/*.png``,
the layout torchvision's Omniglot unpacks; any subset of the two folders and of their alphabets
works. `root` is `task.root`, else METARUN_DATA, else ./data. `download=true` fetches the
official zips (torchvision's URLs and checksums) for the folders that are missing.

Each character is a class. Images are resized to `image_size` (28: Finn et al.) with
antialiasing and inverted, so strokes are 1 and the background 0; the input is float in [0, 1].

Splits (`split`), which never share a character:
  vinyals    the full set (1623 characters, background then evaluation alphabets, sorted):
             the first 1200 characters are for meta-training as in Vinyals et al., of which the
             last 100 are held out for validation (Finn et al.'s 1100/100); the remaining 423
             are the test characters.
  character  a seeded random partition of the characters present by `split_fractions`.
  alphabet   the same over whole alphabets (test characters come from unseen alphabets).
  auto       vinyals when the full set is present, else character.
`rotations=true` adds each character rotated by 90, 180 and 270 degrees as three new classes, in
every split (Santoro et al., 2016; Finn et al., 2017); a character and its rotations always share a split.
"""
import torch
from torchvision.datasets import Omniglot as TorchvisionOmniglot

from metarun.config import ConfigError, DataError
from metarun.tasks.images import ImageTaskFamily, cached, data_root, decode_classes, download, fingerprint, select_classes

FOLDERS = ("images_background", "images_evaluation")
# The official zips, with the checksums torchvision's Omniglot uses.
URL = TorchvisionOmniglot.download_url_prefix + "/{}.zip"
MD5 = dict(TorchvisionOmniglot.zips_md5)
FULL_CHARACTERS = 1623
VINYALS_TRAIN, FINN_VAL = 1200, 100


def character_folders(base):
    """Sorted (folder/alphabet/character, [png files]) of every character with at least one image."""
    found = []
    for folder in FOLDERS:
        for char_dir in sorted((base / folder).glob("*/*")):
            files = sorted(char_dir.glob("*.png"))
            if char_dir.is_dir() and files:
                found.append((f"{folder}/{char_dir.parent.name}/{char_dir.name}", files))
    return found


def partition(n, fractions, generator):
    """A seeded random partition of range(n) into len(fractions) parts of the given sizes (rounded)."""
    order = torch.randperm(n, generator=generator).tolist()
    bounds = [0] + [round(n * sum(fractions[: i + 1])) for i in range(len(fractions))]
    return [sorted(order[bounds[i] : bounds[i + 1]]) for i in range(len(fractions))]


class Omniglot(ImageTaskFamily):
    invert = True

    def __init__(self, ways=5, shots=1, query=15, image_size=28, rotations=True, root=None, download=False,
                 cache_dir=None, split="auto", split_fractions=(0.6, 0.2, 0.2), split_seed=0, device="cpu"):
        super().__init__(ways, shots, query, image_size, channels=1, device=device)
        if split not in ("auto", "vinyals", "character", "alphabet"):
            raise ConfigError("task.split", split, "one of auto, vinyals, character, alphabet")
        fractions = list(split_fractions)
        if len(fractions) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ConfigError("task.split_fractions", fractions, "three numbers >= 0 (train, val, test) that sum to 1")
        if not isinstance(split_seed, int) or isinstance(split_seed, bool):
            raise ConfigError("task.split_seed", split_seed, "an integer")
        self.rotations = rotations
        base = data_root(root) / "omniglot-py"
        if download:
            for folder in FOLDERS:
                if not (base / folder).is_dir():
                    download_folder(base, folder)
        characters = character_folders(base)
        if not characters:
            raise DataError(
                f"no Omniglot images found in {base} (expected {base}/images_background/<alphabet>/<characterNN>/*.png "
                f"and/or images_evaluation/); set task.download=true to fetch it, or point task.root or METARUN_DATA "
                f"at the folder that contains omniglot-py/")
        names = [name for name, _ in characters]
        files = [f for _, fs in characters for f in fs]
        data = cached(cache_dir, "omniglot", {"root": str(base.resolve()), "image_size": image_size},
                      fingerprint(files), lambda: {**decode_classes([fs for _, fs in characters], 1, image_size, self.invert),
                                                   "classes": names})
        self.classes = data["classes"]
        self.split_classes = self.split_characters(split, fractions, split_seed)
        splits = {}
        for name, keep in self.split_classes.items():
            images, counts = select_classes(data["images"], data["counts"], keep)
            if rotations:
                images, counts = with_rotations(images, counts)
            splits[name] = (images, counts)
        self.set_splits(splits)

    def split_characters(self, split, fractions, seed):
        """{split: indices into self.classes}, disjoint."""
        n = len(self.classes)
        if split == "auto":
            split = "vinyals" if n == FULL_CHARACTERS else "character"
        self.split = split
        if split == "vinyals":
            if n != FULL_CHARACTERS:
                raise ConfigError("task.split", "vinyals", f"needs the full Omniglot ({FULL_CHARACTERS} characters; "
                                  f"found {n}): use character or alphabet")
            train_end = VINYALS_TRAIN - FINN_VAL
            parts = [list(range(train_end)), list(range(train_end, VINYALS_TRAIN)), list(range(VINYALS_TRAIN, n))]
        elif split == "character":
            parts = partition(n, fractions, torch.Generator().manual_seed(seed))
        else:
            alphabets = sorted({c.rsplit("/", 1)[0] for c in self.classes})
            groups = partition(len(alphabets), fractions, torch.Generator().manual_seed(seed))
            parts = [[i for i, c in enumerate(self.classes) if c.rsplit("/", 1)[0] in {alphabets[a] for a in g}] for g in groups]
        return dict(zip(("train", "val", "test"), parts))


def download_folder(base, folder):
    download(URL.format(folder), base, f"{folder}.zip", MD5[folder])


def with_rotations(images, counts):
    """Append each class rotated by 90, 180 and 270 degrees as three new classes (same images, new labels)."""
    rotated = [torch.rot90(images, k, dims=(2, 3)) for k in range(4)]
    return torch.cat(rotated), counts.repeat(4)
