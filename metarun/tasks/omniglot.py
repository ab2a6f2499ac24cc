"""Omniglot few-shot classification (Lake et al., 2015), in the protocols of Vinyals et al. (2016),
Finn et al. (2017) and Lake et al.'s one-shot challenge.

Data: ``<root>/omniglot-py/images_background|images_evaluation/<alphabet>/<characterNN>/*.png``,
the layout torchvision's Omniglot unpacks; any subset of the two folders and of their alphabets
works. `root` is `task.root`, else METARUN_DATA, else ./data. `download=true` fetches the
official zips (torchvision's URLs and checksums) for the folders that are missing.

Each character is a class. Images are resized to `image_size` (28: Finn et al.) with
antialiasing and inverted, so strokes are 1 and the background 0; the input is float in [0, 1].
A file ``<charid>_<NN>.png`` is drawer NN's drawing of the character (20 drawers per character).

Splits (`split`), which never share a character:
  sorted     the full set (1623 characters, background then evaluation alphabets, sorted): the
             first 1200 characters are for meta-training as in Vinyals et al., of which the last
             100 are held out for validation (1100/100); the remaining 423 are the test characters.
             (`vinyals` is the same split under its older name.) Validation comes from 3 alphabets.
  shuffled   Finn et al.'s code: the 1623 characters of both folders in one list (sorted by
             alphabet/character here; Finn listed a merged folder), shuffled with Python's
             random.seed(1), then the first 1100 train, the next 100 validation, the last 423 test.
             The permutation is Python 3's; Finn's (Python 2, os.listdir order) cannot be recovered.
  character  a seeded random partition of the characters present by `split_fractions`.
  alphabet   the same over whole alphabets (test characters come from unseen alphabets); or the
             alphabets named by `val_alphabets` and `test_alphabets`, with the others for training.
  auto       sorted when the full set is present, else character.

Episodes (`episodes`): `any` draws the `ways` classes of an episode from the whole split;
`within_alphabet` first draws an alphabet of the split (uniformly), then all `ways` classes
from it, as in Lake et al.'s runs; every alphabet of a split must then hold `ways` classes.
`drawers=disjoint` draws `shots + query` distinct drawers per episode: the first `shots` draw the
support images of every class, the others the query images, so no drawer appears in both (as in
Lake et al.'s runs); `any` draws each class's images independently.

Rotations (`rotations`), in the splits `rotated_splits`: `as_classes` (or true) adds each
character rotated by 90, 180 and 270 degrees as three new classes (Santoro et al., 2016; a
character and its rotations always share a split, and may meet in one episode); `per_task` gives
each class of an episode one random rotation (Finn et al.'s code: N distinct characters per
task); `none` (or false) uses the characters as drawn.

`augment=affine` distorts every image of a training episode with Koch et al. (2015)'s random
affine transformations (torchvision's affine on the uint8 images, parameters from the task
generator, so runs stay deterministic and resumable); validation and test images are never
distorted.
"""
import random

import torch
from torchvision.datasets import Omniglot as TorchvisionOmniglot

from metarun.config import ConfigError, DataError
from metarun.tasks.images import (SPLITS, ImageTaskFamily, affine_params, cached, data_root, decode_classes, download,
                                  fingerprint, select_classes)

FOLDERS = ("images_background", "images_evaluation")
# The official zips, with the checksums torchvision's Omniglot uses.
URL = TorchvisionOmniglot.download_url_prefix + "/{}.zip"
MD5 = dict(TorchvisionOmniglot.zips_md5)
FULL_CHARACTERS = 1623
VINYALS_TRAIN, FINN_VAL = 1200, 100
FINN_SEED = 1
SPLIT_OPTIONS = ("auto", "sorted", "vinyals", "shuffled", "character", "alphabet")
ROTATIONS = {True: "as_classes", False: "none", "as_classes": "as_classes", "per_task": "per_task", "none": "none"}
def alphabet_of(name):
    """'images_background/Greek/character01' -> 'images_background/Greek'."""
    return name.rsplit("/", 1)[0]


def drawer_of(path):
    """The drawer number of an Omniglot file '<charid>_<NN>.png', or None."""
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


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
                 cache_dir=None, split="auto", split_fractions=(0.6, 0.2, 0.2), split_seed=0, val_alphabets=None,
                 test_alphabets=None, episodes="any", drawers="any", rotated_splits=SPLITS, augment="none",
                 build_splits=SPLITS, device="cpu"):
        super().__init__(ways, shots, query, image_size, channels=1, device=device)
        if split not in SPLIT_OPTIONS:
            raise ConfigError("task.split", split, "one of " + ", ".join(SPLIT_OPTIONS))
        fractions = list(split_fractions)
        if len(fractions) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ConfigError("task.split_fractions", fractions, "three numbers >= 0 (train, val, test) that sum to 1")
        if not isinstance(split_seed, int) or isinstance(split_seed, bool):
            raise ConfigError("task.split_seed", split_seed, "an integer")
        if not isinstance(rotations, (bool, str)) or rotations not in ROTATIONS:
            raise ConfigError("task.rotations", rotations, "none, per_task or as_classes (false = none, true = as_classes)")
        for key, value, options in (("task.episodes", episodes, ("any", "within_alphabet")), ("task.drawers", drawers, ("any", "disjoint")),
                                    ("task.augment", augment, ("none", "affine"))):
            if value not in options:
                raise ConfigError(key, value, " or ".join(options))
        for key, value in (("task.rotated_splits", rotated_splits), ("build_splits", build_splits)):
            if isinstance(value, str) or not set(value) <= set(SPLITS):
                raise ConfigError(key, value, "a list of splits among train, val, test")
        self.rotations, self.rotated_splits = ROTATIONS[rotations], tuple(rotated_splits)
        self.episodes, self.drawers, self.augment = episodes, drawers, augment
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
        self.image_drawers = [[drawer_of(f) for f in fs] for _, fs in characters]  # per character, in stored order
        self.alphabets = sorted({alphabet_of(c) for c in self.classes})
        self.split_classes = self.split_characters(split, fractions, split_seed, val_alphabets, test_alphabets)
        # Per split: the character and rotation (quarter turns) behind each class, its alphabet, and
        # (drawers=disjoint) each class's image offset per drawer.
        self.class_origin, self.groups, self.group_names, self.drawer_slots = {}, {}, {}, {}
        splits = {}
        for name in build_splits:
            keep = self.split_classes[name]
            images, counts = select_classes(data["images"], data["counts"], keep)
            origin = [(c, 0) for c in keep]
            if self.rotations == "as_classes" and name in self.rotated_splits:
                images, counts = with_rotations(images, counts)
                origin = [(c, turns) for turns in range(4) for c, _ in origin]
            splits[name] = (images, counts)
            self.class_origin[name] = origin
            alphabets = sorted({alphabet_of(self.classes[c]) for c, _ in origin})
            self.group_names[name] = alphabets
            self.groups[name] = torch.tensor([alphabets.index(alphabet_of(self.classes[c])) for c, _ in origin])
            if drawers == "disjoint":
                self.drawer_slots[name] = self.slots_by_drawer(name, origin)
        self.set_splits(splits, keep_uint8=("train",) if augment == "affine" else ())
        if episodes == "within_alphabet":
            self.check_alphabets_hold_episodes()

    def split_characters(self, split, fractions, seed, val_alphabets=None, test_alphabets=None):
        """{split: indices into self.classes}, disjoint."""
        n = len(self.classes)
        if split == "auto":
            split = "sorted" if n == FULL_CHARACTERS else "character"
        self.split = split
        if (val_alphabets is not None or test_alphabets is not None) and split != "alphabet":
            raise ConfigError("task.test_alphabets", test_alphabets, "null unless task.split=alphabet")
        if split in ("sorted", "vinyals", "shuffled"):
            if n != FULL_CHARACTERS:
                raise ConfigError("task.split", split, f"needs the full Omniglot ({FULL_CHARACTERS} characters; "
                                  f"found {n}): use character or alphabet")
            train_end = VINYALS_TRAIN - FINN_VAL
            order = list(range(n))
            if split == "shuffled":
                order.sort(key=lambda i: self.classes[i].split("/", 1)[1])  # alphabet/character, both folders as one
                random.Random(FINN_SEED).shuffle(order)
            parts = [sorted(order[:train_end]), sorted(order[train_end:VINYALS_TRAIN]), sorted(order[VINYALS_TRAIN:])]
        elif split == "character":
            parts = partition(n, fractions, torch.Generator().manual_seed(seed))
        else:
            if val_alphabets is not None or test_alphabets is not None:
                groups = self.named_alphabets(val_alphabets, test_alphabets)
            else:
                groups = [[self.alphabets[a] for a in g] for g in partition(len(self.alphabets), fractions, torch.Generator().manual_seed(seed))]
            parts = [[i for i, c in enumerate(self.classes) if alphabet_of(c) in set(g)] for g in groups]
        return dict(zip(SPLITS, parts))

    def named_alphabets(self, val_alphabets, test_alphabets):
        """[train, val, test] alphabet keys from the names in task.val_alphabets and task.test_alphabets."""
        by_name = {a.rsplit("/", 1)[-1]: a for a in self.alphabets}
        chosen = []
        for key, names in (("task.val_alphabets", val_alphabets), ("task.test_alphabets", test_alphabets)):
            if names is None or isinstance(names, str) or not names or any(x not in by_name for x in names):
                raise ConfigError(key, None if names is None else (names if isinstance(names, str) else list(names)),
                                  "a non-empty list of alphabets present (both lists are needed): " + ", ".join(sorted(by_name)))
            chosen.append([by_name[x] for x in names])
        if set(chosen[0]) & set(chosen[1]):
            raise ConfigError("task.test_alphabets", list(test_alphabets), "alphabets not in task.val_alphabets")
        train = [a for a in self.alphabets if a not in set(chosen[0]) | set(chosen[1])]
        return [train, *chosen]

    def slots_by_drawer(self, split, origin):
        """(classes, drawers) image offsets inside each class, one column per drawer of the split."""
        per_class = [self.image_drawers[c] for c, _ in origin]
        found = sorted({d for ds in per_class for d in ds if d is not None})
        for (c, _), ds in zip(origin, per_class):
            if sorted(ds) != found:
                raise DataError(f"task.drawers=disjoint needs every character of the {split} split drawn once by each of "
                                f"the same drawers ({len(found)} found, from file names <id>_<drawer>.png); "
                                f"{self.classes[c]} has drawers {sorted(d for d in ds if d is not None)} "
                                f"(use task.drawers=any)")
        return torch.tensor([[ds.index(d) for d in found] for ds in per_class])

    def check_alphabets_hold_episodes(self):
        for split, groups in self.groups.items():
            sizes = torch.bincount(groups)
            small = int(sizes.argmin())
            if sizes[small] < self.ways:
                name = self.group_names[split][small].rsplit("/", 1)[-1]
                raise ConfigError("task.ways", self.ways, f"at most {int(sizes[small])} with task.episodes=within_alphabet: "
                                  f"alphabet {name} has {int(sizes[small])} classes in the {split} split and an episode takes "
                                  f"all its classes from one alphabet; lower task.ways, move {name} to another split "
                                  "(task.split=alphabet with task.val_alphabets / task.test_alphabets), or use task.episodes=any")

    def draw(self, n, generator, split):
        if self.episodes == "any" and self.drawers == "any":
            drawn = super().draw(n, generator, split)  # the original sampler, draw for draw
        else:
            counts = self.splits[split][2]
            k = self.shots + self.query
            keys = torch.rand(n, len(counts), generator=generator, device="cpu")
            if self.episodes == "within_alphabet":  # an alphabet per episode, then its classes
                groups = self.groups[split]
                alphabet = torch.randint(int(groups.max()) + 1, (n,), generator=generator, device="cpu")
                keys.masked_fill_(groups != alphabet[:, None], -1.0)
            classes = keys.topk(self.ways, dim=1).indices
            if self.drawers == "disjoint":  # k drawers per episode: the first `shots` for the support set
                slots = self.drawer_slots[split]
                drawers = torch.rand(n, slots.shape[1], generator=generator, device="cpu").topk(k, dim=1).indices
                within = slots[classes[..., None], drawers[:, None, :]]
            else:
                within = self.draw_images(classes, counts, k, generator)
            drawn = {"classes": classes, "within": within}
        if self.rotations == "per_task" and split in self.rotated_splits:
            drawn["rotations"] = torch.randint(4, (n, self.ways), generator=generator, device="cpu")
        if self.augment == "affine" and split == "train":
            drawn["affine"] = affine_params(drawn["within"].numel(), self.image_size, generator)
        return drawn

    def describe(self, n, generator, split):
        """What `sample(n, generator, split)` draws, as one dict per episode: the alphabet(s), the
        character and rotation (degrees) behind each label, and the drawers of its support and query images."""
        drawn = self.draw(n, generator, split)
        origin = self.class_origin[split]
        rows = []
        for i, (classes, within) in enumerate(zip(drawn["classes"].tolist(), drawn["within"].tolist())):
            chars = [origin[c] for c in classes]
            turns = drawn["rotations"][i].tolist() if "rotations" in drawn else [0] * self.ways
            drawers = [[self.image_drawers[c][w] for w in ws] for (c, _), ws in zip(chars, within)]
            rows.append({
                "alphabets": sorted({alphabet_of(self.classes[c]).rsplit("/", 1)[-1] for c, _ in chars}),
                "characters": [self.classes[c] for c, _ in chars],
                "rotations": [90 * ((r + t) % 4) for (_, r), t in zip(chars, turns)],
                "support_drawers": [d[: self.shots] for d in drawers],
                "query_drawers": [d[self.shots:] for d in drawers],
            })
        return rows


def download_folder(base, folder):
    download(URL.format(folder), base, f"{folder}.zip", MD5[folder])


def with_rotations(images, counts):
    """Append each class rotated by 90, 180 and 270 degrees as three new classes (same images, new labels)."""
    rotated = [torch.rot90(images, k, dims=(2, 3)) for k in range(4)]
    return torch.cat(rotated), counts.repeat(4)
