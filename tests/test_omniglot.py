"""Omniglot: splits, episodes, the decoded-image cache, download, bad inputs, and a short run that learns."""
import hashlib
import io
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision.datasets.utils as tv_utils
from omegaconf import OmegaConf
from torchvision.io import encode_png, write_png

import metarun.tasks.images as images_module
import metarun.tasks.omniglot as omniglot_module
from metarun.config import ConfigError, DataError
from metarun.tasks.omniglot import Omniglot

from conftest import SHARED_DATA

# torchvision 0.29 deprecates its image codecs (used here to write fixtures) in favour of TorchCodec.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
SHARED = SHARED_DATA  # $METARUN_DATA, else ../shared/data (tests/conftest.py skips these tests without it)
needs_shared = pytest.mark.needs_data


def character_image(cls, drawer, size=8):
    """A size x size grayscale image whose pixel (0, 0) encodes the class and (0, 1) the drawer."""
    image = torch.full((1, size, size), 255, dtype=torch.uint8)
    image[0, 0, 0] = 10 * cls
    image[0, 0, 1] = 10 * drawer
    image[0, 4:, 4:] = 0  # a stroke-like block, so rotations are visible
    return image


def layout(alphabets, drawers):
    """[(relative path, image)] of an omniglot-py tree; classes numbered in sorted order."""
    files, cls = [], 0
    for folder, alphabet, n_chars in alphabets:
        for c in range(1, n_chars + 1):
            for d in range(drawers):
                files.append((f"{folder}/{alphabet}/character{c:02d}/{cls:04d}_{d:02d}.png", character_image(cls, d)))
            cls += 1
    return files


def make_omniglot(root, alphabets=(("images_background", "Alpha", 4), ("images_background", "Beta", 3), ("images_evaluation", "Gamma", 3)), drawers=6):
    for rel, image in layout(alphabets, drawers):
        path = Path(root) / "omniglot-py" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(image, str(path))
    return Path(root)


@pytest.fixture
def tiny(tmp_path):
    return make_omniglot(tmp_path / "data"), tmp_path / "cache"


def tiny_task(tiny, **kw):
    root, cache = tiny
    options = dict(root=root, cache_dir=cache, image_size=8, ways=3, shots=1, query=2, rotations=False,
                   split="character", split_fractions=[0.4, 0.3, 0.3])
    return Omniglot(**{**options, **kw})


def test_character_split_is_disjoint_and_covers_all(tiny):
    task = tiny_task(tiny)
    parts = task.split_classes
    assert [len(parts[s]) for s in ("train", "val", "test")] == [4, 3, 3]  # 10 characters, 0.4/0.3/0.3
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(10))
    # another seed gives another partition, the same seed the same one
    assert tiny_task(tiny, split_seed=1).split_classes != parts
    assert tiny_task(tiny).split_classes == parts


def test_alphabet_split_keeps_alphabets_whole(tiny):
    task = tiny_task(tiny, split="alphabet", split_fractions=[1 / 3, 1 / 3, 1 / 3], ways=2, query=1)
    alphabet = [c.rsplit("/", 1)[0] for c in task.classes]
    owners = {s: {alphabet[i] for i in idx} for s, idx in task.split_classes.items()}
    assert all(len(v) == 1 for v in owners.values())
    assert len(set.union(*owners.values())) == 3


def full_set_names():
    """1623 character names as character_folders lists them: background alphabets, then evaluation ones."""
    names = [f"images_background/B{i // 20:02d}/character{i % 20 + 1:02d}" for i in range(960)]
    return names + [f"images_evaluation/A{i // 20:02d}/character{i % 20 + 1:02d}" for i in range(663)]


def test_sorted_split_on_the_full_set():
    task = Omniglot.__new__(Omniglot)  # the split logic alone: 1623 character names, no images
    task.classes = full_set_names()
    parts = task.split_characters("auto", [0.6, 0.2, 0.2], 0)
    assert task.split == "sorted"
    assert parts == {"train": list(range(1100)), "val": list(range(1100, 1200)), "test": list(range(1200, 1623))}
    assert task.split_characters("vinyals", [0.6, 0.2, 0.2], 0) == parts  # the older name of the same split


def test_shuffled_split_is_finns():
    """Finn et al.'s code: one list of the characters of both folders, random.seed(1); random.shuffle(list);
    then 1100 train, 100 validation, 423 test."""
    import random

    task = Omniglot.__new__(Omniglot)
    task.classes = full_set_names()
    parts = task.split_characters("shuffled", [0.6, 0.2, 0.2], 0)
    merged = sorted(task.classes, key=lambda c: c.split("/", 1)[1])  # alphabet/character, folders merged
    random.seed(1)
    random.shuffle(merged)
    index = {c: i for i, c in enumerate(task.classes)}
    assert parts["train"] == sorted(index[c] for c in merged[:1100])
    assert parts["val"] == sorted(index[c] for c in merged[1100:1200])
    assert parts["test"] == sorted(index[c] for c in merged[1200:])
    # Validation is no longer a few neighbouring alphabets: it spans most of them.
    def alphabets(split):
        return {task.classes[i].rsplit("/", 1)[0] for i in parts[split]}

    assert len(alphabets("val")) > 40 and len({task.classes[i].rsplit("/", 1)[0] for i in range(1100, 1200)}) == 5
    with pytest.raises(ConfigError, match="task.split"):
        task.classes = task.classes[:300]
        task.split_characters("shuffled", [0.6, 0.2, 0.2], 0)


@needs_shared
def test_shared_data_split_and_episode(tmp_path):
    task = Omniglot(root=SHARED, cache_dir=tmp_path, split="auto")  # auto: not the full set -> character
    assert task.split == "character"
    sizes = {s: len(v) for s, v in task.split_classes.items()}
    assert sizes == {"train": 145, "val": 49, "test": 48}  # 242 characters: bounds round(145.2), round(193.6)
    names = {s: {task.classes[i] for i in v} for s, v in task.split_classes.items()}
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    # rotations: four classes per character in every split
    assert {s: len(v[2]) for s, v in task.splits.items()} == {s: 4 * n for s, n in sizes.items()}
    sx, sy, qx, qy = task.sample(4, torch.Generator().manual_seed(0), "test")
    assert sx.shape == (4, 5, 1, 28, 28) and qx.shape == (4, 75, 1, 28, 28)
    # inverted: the background is 0 and strokes near 1
    assert sx.dtype == torch.float32 and sx.min() == 0 and sx.max() > 0.9 and sx.mean() < 0.25
    with pytest.raises(ConfigError, match="task.split"):
        Omniglot(root=SHARED, cache_dir=tmp_path, split="vinyals")


def test_episode_shapes_labels_and_class_consistency(tiny):
    task = tiny_task(tiny, ways=3, shots=2, query=3)
    sx, sy, qx, qy = task.sample(50, torch.Generator().manual_seed(0), "train")
    assert sx.shape == (50, 6, 1, 8, 8) and qx.shape == (50, 9, 1, 8, 8)
    assert sy.dtype == qy.dtype == torch.int64
    assert torch.equal(sy[0], torch.tensor([0, 0, 1, 1, 2, 2])) and torch.equal(qy[0], torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    # pixel (0, 0) encodes the class: 1 - 10 * cls / 255 after inversion and scaling
    cls_s = ((1 - sx[:, :, 0, 0, 0]) * 255 / 10).round().long()
    cls_q = ((1 - qx[:, :, 0, 0, 0]) * 255 / 10).round().long()
    drawer = torch.cat([((1 - sx[:, :, 0, 0, 1]) * 255 / 10).round().long().view(50, 3, 2),
                        ((1 - qx[:, :, 0, 0, 1]) * 255 / 10).round().long().view(50, 3, 3)], 2)
    train_classes = set(task.split_classes["train"])
    for t in range(50):
        per_label = [set(cls_s[t][sy[t] == j].tolist()) | set(cls_q[t][qy[t] == j].tolist()) for j in range(3)]
        assert all(len(s) == 1 for s in per_label)  # one class per label, in support and query
        chosen = [s.pop() for s in per_label]
        assert len(set(chosen)) == 3 and set(chosen) <= train_classes
        assert all(len(set(drawer[t, j].tolist())) == 5 for j in range(3))  # 5 distinct drawers per class
    # the class behind label 0 varies from task to task (random assignment)
    assert len(set(cls_s[:, 0].tolist())) == len(train_classes)


def test_same_generator_state_same_episode(tiny):
    task = tiny_task(tiny)
    a = task.sample(8, torch.Generator().manual_seed(3), "val")
    b = task.sample(8, torch.Generator().manual_seed(3), "val")
    c = task.sample(8, torch.Generator().manual_seed(4), "val")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_rotations_are_extra_classes(tiny):
    plain, rotated = tiny_task(tiny), tiny_task(tiny, rotations=True)
    images, _, counts = plain.splits["train"]
    r_images, _, r_counts = rotated.splits["train"]
    assert len(r_counts) == 4 * len(counts)
    n = images.shape[0]
    for k in range(4):
        assert torch.equal(r_images[k * n : (k + 1) * n], torch.rot90(images, k, dims=(2, 3)))


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tiny, monkeypatch):
    root, cache = tiny
    first = tiny_task(tiny)
    assert len(list(cache.glob("omniglot-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(images_module, "decode_image", no_decoding)
    second = tiny_task(tiny)
    assert torch.equal(second.splits["train"][0], first.splits["train"][0])
    monkeypatch.undo()

    calls = []
    real = images_module.decode_image
    monkeypatch.setattr(images_module, "decode_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    # a new drawing of an existing character changes the fingerprint: everything is decoded again
    write_png(character_image(0, 9), str(root / "omniglot-py/images_background/Alpha/character01/extra.png"))
    third = tiny_task(tiny)
    assert len(calls) == 61
    assert third.splits["train"][2].sum() + third.splits["val"][2].sum() + third.splits["test"][2].sum() == 61
    assert len(list(cache.glob("omniglot-*.pt"))) == 1  # rebuilt in place
    # another image size is another cache entry
    tiny_task(tiny, image_size=6)
    assert len(list(cache.glob("omniglot-*.pt"))) == 2


def test_root_and_cache_from_environment(tiny, monkeypatch, tmp_path):
    root, _ = tiny
    monkeypatch.setenv("METARUN_DATA", str(root))
    monkeypatch.setenv("METARUN_CACHE", str(tmp_path / "envcache"))
    task = Omniglot(image_size=8, ways=2, shots=1, query=2, rotations=False, split="character")
    assert len(task.classes) == 10
    assert len(list((tmp_path / "envcache").glob("omniglot-*.pt"))) == 1


def test_missing_data_names_path_and_remedies(tmp_path, monkeypatch):
    monkeypatch.delenv("METARUN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        Omniglot(cache_dir=tmp_path / "cache")
    message = str(e.value)
    assert str(tmp_path / "data" / "omniglot-py") in message
    assert "task.download=true" in message and "METARUN_DATA" in message


def zip_of(folder, alphabets, drawers):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for rel, image in layout(alphabets, drawers):
            z.writestr(rel, encode_png(image).numpy().tobytes())
    return buffer.getvalue()


def test_download_fetches_and_extracts_the_official_zips(tmp_path, monkeypatch):
    zips = {"images_background": zip_of("images_background", [("images_background", "Alpha", 3)], 4),
            "images_evaluation": zip_of("images_evaluation", [("images_evaluation", "Beta", 3)], 4)}
    monkeypatch.setattr(omniglot_module, "MD5", {k: hashlib.md5(v).hexdigest() for k, v in zips.items()})
    fetched = []

    def fake_urlretrieve(url, filename, chunk_size=None):  # the only network call, replaced
        fetched.append(url)
        Path(filename).write_bytes(zips[url.rsplit("/", 1)[1][: -len(".zip")]])

    monkeypatch.setattr(tv_utils, "_urlretrieve", fake_urlretrieve)
    monkeypatch.setattr(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)
    task = Omniglot(root=tmp_path / "data", download=True, cache_dir=tmp_path / "cache", image_size=8, ways=2,
                    shots=1, query=1, rotations=False, split="character", split_fractions=[0.34, 0.33, 0.33])
    assert fetched == [omniglot_module.URL.format("images_background"), omniglot_module.URL.format("images_evaluation")]
    assert fetched[0] == "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_background.zip"
    assert len(task.classes) == 6 and task.classes[0] == "images_background/Alpha/character01"
    # present now: a second construction downloads nothing
    Omniglot(root=tmp_path / "data", download=True, cache_dir=tmp_path / "cache", image_size=8, ways=2, shots=1,
             query=1, rotations=False, split="character", split_fractions=[0.34, 0.33, 0.33])
    assert len(fetched) == 2


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    def offline(url, filename, chunk_size=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "_urlretrieve", offline)
    monkeypatch.setattr(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)
    with pytest.raises(DataError, match="download of https://raw.githubusercontent.com/.*images_background.zip.*failed"):
        Omniglot(root=tmp_path / "data", download=True, cache_dir=tmp_path / "cache")


def test_unreadable_image_is_named(tiny):
    root, _ = tiny
    bad = root / "omniglot-py/images_background/Beta/character02/broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        tiny_task(tiny)


@pytest.mark.parametrize("options, key", [
    (dict(ways=5), "task.ways"),  # the val split has 3 characters
    (dict(shots=4, query=3), "task.shots"),  # 6 drawers per character
    (dict(split="random"), "task.split"),
    (dict(split_fractions=[0.5, 0.5]), "task.split_fractions"),
    (dict(split_fractions=[0.5, 0.4, 0.4]), "task.split_fractions"),
    (dict(split_seed="zero"), "task.split_seed"),
])
def test_bad_options_are_config_errors(tiny, options, key):
    with pytest.raises(ConfigError) as e:
        tiny_task(tiny, **options)
    assert e.value.key == key


def test_load_images_matches_training_preprocessing(tiny, tmp_path):
    root, _ = tiny
    task = tiny_task(tiny, image_size=4)
    files = sorted((root / "omniglot-py").glob("*/*/*/*.png"))
    loaded = task.load_images(files)
    assert loaded.shape == (60, 1, 4, 4) and loaded.dtype == torch.float32
    stored = torch.cat([task.splits[s][0] for s in ("train", "val", "test")])
    order = sum((task.split_classes[s] for s in ("train", "val", "test")), [])
    expected = torch.cat([loaded[6 * c : 6 * c + 6] for c in order])
    assert torch.equal(stored, expected)
    # an RGB photo of any size: white paper with a black stroke -> 1 channel, inverted, resized
    rgb = torch.full((3, 40, 30), 255, dtype=torch.uint8)
    rgb[:, 10:30, 10:20] = 0
    write_png(rgb, str(tmp_path / "photo.png"))
    photo = task.load_images([tmp_path / "photo.png"])
    assert photo.shape == (1, 1, 4, 4) and photo[0, 0, 0, 0] < 0.01 and photo.max() > 0.5
    with pytest.raises(DataError, match="missing.png"):
        task.load_images([tmp_path / "missing.png"])


@needs_shared
@pytest.mark.slow
def test_short_run_on_shared_data_learns(tmp_path, monkeypatch):
    """ANIL on the shared alphabets, held-out characters: well above chance (20%) after a short run."""
    from hydra import compose, initialize_config_module

    from metarun.train import run

    monkeypatch.setenv("WANDB_MODE", "disabled")
    overrides = [f"task.root={SHARED}", f"task.cache_dir={tmp_path / 'cache'}", "model.channels=16",
                 "iterations=60", "eval_tasks=100", "eval_every=1000", "eval_steps=3", "progress=false",
                 "meta_batch_size=8", "algo=anil"]
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=omniglot_shared_5w1s", *overrides])
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    print(f"test accuracy {summary['test/accuracy']:.3f} +- {summary['test/accuracy_ci95']:.3f} (chance 0.2)")
    assert summary["test/accuracy"] > 0.45, summary["test/accuracy"]
    assert OmegaConf.select(cfg, "task.rotations") is True


# Alphabets for the episode tests: (folder, alphabet, characters). Every image encodes its class in
# its four corners and its drawer in its centre, both unchanged by quarter turns, and has one
# stroke in a corner that shows the rotation.
ALPHABETS = (("images_background", "Alpha", 6), ("images_background", "Beta", 5), ("images_background", "Gamma", 7),
             ("images_evaluation", "Delta", 6), ("images_evaluation", "Epsilon", 5))


def coded_image(cls, drawer, size=8):
    image = torch.zeros((1, size, size), dtype=torch.uint8)  # files are inverted on reading: 0 here = 255 stored
    for i, j in ((0, 0), (0, size - 1), (size - 1, 0), (size - 1, size - 1)):
        image[0, i, j] = cls + 1
    image[0, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1] = 10 * (drawer + 1)
    image[0, 1:3, 1:3] = 250  # the stroke: top-left when upright
    return 255 - image


def make_coded_omniglot(root, alphabets=ALPHABETS, drawers=6):
    cls = 0
    for folder, alphabet, n in alphabets:
        for c in range(1, n + 1):
            for d in range(1, drawers + 1):
                path = Path(root) / "omniglot-py" / folder / alphabet / f"character{c:02d}" / f"{cls:04d}_{d:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_png(coded_image(cls, d), str(path))
            cls += 1
    return Path(root)


def decode(x):
    """Episode images (..., 1, 8, 8) -> class ids, drawer ids, quarter turns (counter-clockwise, as rot90)."""
    pixels = (x * 255).round().long()[..., 0, :, :]
    cls = pixels[..., 0, 0] - 1
    drawer = pixels[..., 3, 3] // 10 - 1
    corners = torch.stack([pixels[..., 1, 1], pixels[..., 6, 1], pixels[..., 6, 6], pixels[..., 1, 6]], -1)
    return cls, drawer, (corners == 250).float().argmax(-1)


@pytest.fixture
def coded(tmp_path):
    return make_coded_omniglot(tmp_path / "data"), tmp_path / "cache"


def coded_task(coded, **kw):
    root, cache = coded
    options = dict(root=root, cache_dir=cache, image_size=8, ways=3, shots=1, query=2, rotations="none",
                   split="alphabet", val_alphabets=["Delta"], test_alphabets=["Epsilon"])
    return Omniglot(**{**options, **kw})


def alphabet_of_class(task):
    return {i: c.rsplit("/", 1)[0].rsplit("/", 1)[1] for i, c in enumerate(task.classes)}


def test_decoding_the_coded_images(coded):
    task = coded_task(coded, rotations="as_classes")
    images, _, counts = task.splits["val"]
    cls, drawer, turns = decode(images)
    assert cls.tolist() == [c for c, _ in task.class_origin["val"] for _ in range(6)]
    assert drawer.tolist() == list(range(1, 7)) * len(counts)
    assert turns.tolist() == [t for _, t in task.class_origin["val"] for _ in range(6)]


def test_within_alphabet_episodes_have_one_alphabet(coded):
    """Train split: Alpha (6), Beta (5), Gamma (7). within_alphabet: every episode from one alphabet, each
    alphabet about equally often; `any` mixes them (so the check below can fail)."""
    names = None
    for episodes in ("within_alphabet", "any"):
        task = coded_task(coded, ways=4, episodes=episodes)
        names = alphabet_of_class(task)
        sx, sy, qx, qy = task.sample(300, torch.Generator().manual_seed(0), "train")
        cls = torch.cat([decode(sx)[0], decode(qx)[0]], 1)
        per_episode = [{names[c] for c in row} for row in cls.tolist()]
        if episodes == "within_alphabet":
            assert all(len(a) == 1 for a in per_episode)
            counts = {a: sum(a in e for e in per_episode) for a in ("Alpha", "Beta", "Gamma")}
            assert all(70 <= n <= 130 for n in counts.values()), counts  # uniform over alphabets: 100 each
            assert all(len(set(row[:4])) == 4 for row in decode(sx)[0].tolist())  # 4 distinct characters
        else:
            assert sum(len(a) > 1 for a in per_episode) > 200


def test_within_alphabet_needs_alphabets_of_ways_classes(coded):
    options = dict(ways=6, test_alphabets=["Gamma"], episodes="within_alphabet")  # train: Alpha 6, Beta 5, Epsilon 5
    with pytest.raises(ConfigError) as e:
        coded_task(coded, **options)
    assert e.value.key == "task.ways" and "Beta has 5 classes in the train split" in str(e.value)
    coded_task(coded, **{**options, "episodes": "any"})  # 16 training characters: fine without the alphabet rule
    # Rotations as classes give every alphabet four times the classes: 6 ways fit.
    coded_task(coded, rotations="as_classes", **options)


@pytest.mark.parametrize("options", [dict(split="alphabet", split_fractions=[0.6, 0.2, 0.2], split_seed=3),
                                     dict(split="alphabet", val_alphabets=["Beta"], test_alphabets=["Delta", "Gamma"])])
@pytest.mark.parametrize("rotations", ["as_classes", "per_task"])
def test_alphabet_splits_share_no_alphabet_character_or_rotation(coded, options, rotations):
    root, cache = coded
    task = Omniglot(root=root, cache_dir=cache, image_size=8, ways=2, shots=1, query=2, rotations=rotations, **options)
    names = alphabet_of_class(task)
    seen = {}
    for split in ("train", "val", "test"):
        sx, sy, qx, qy = task.sample(200, torch.Generator().manual_seed(1), split)
        cls, _, turns = (torch.cat([a, b], 1) for a, b in zip(decode(sx), decode(qx)))
        # What the episodes show: characters, their alphabets and the rotated copies of them.
        seen[split] = {"alphabets": {names[c] for c in cls.flatten().tolist()},
                      "characters": set(cls.flatten().tolist()),
                      "rotated": set(zip(cls.flatten().tolist(), turns.flatten().tolist()))}
        assert seen[split]["characters"] <= set(task.split_classes[split])
        assert {t for _, t in seen[split]["rotated"]} == {0, 1, 2, 3}  # rotated copies do occur
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        for kind in ("alphabets", "characters", "rotated"):
            assert not seen[a][kind] & seen[b][kind], (a, b, kind)
    assert set.union(*(seen[s]["alphabets"] for s in seen)) == {"Alpha", "Beta", "Gamma", "Delta", "Epsilon"}


def test_per_task_rotations_turn_each_class_as_a_whole(coded):
    task = coded_task(coded, ways=3, shots=2, query=3, rotations="per_task", rotated_splits=["train"])
    sx, sy, qx, qy = task.sample(100, torch.Generator().manual_seed(2), "train")
    cls = torch.cat([decode(sx)[0].view(100, 3, 2), decode(qx)[0].view(100, 3, 3)], 2)
    turns = torch.cat([decode(sx)[2].view(100, 3, 2), decode(qx)[2].view(100, 3, 3)], 2)
    assert (turns == turns[..., :1]).all() and (cls == cls[..., :1]).all()  # one character, one rotation per class
    assert all(len(set(row)) == 3 for row in cls[..., 0].tolist())  # N distinct characters per task (Finn's code)
    assert set(turns.flatten().tolist()) == {0, 1, 2, 3}
    described = task.describe(100, torch.Generator().manual_seed(2), "train")
    assert [r["rotations"] for r in described] == (90 * turns[..., 0]).tolist()
    # Outside rotated_splits nothing turns.
    assert decode(task.sample(50, torch.Generator().manual_seed(2), "test")[0])[2].eq(0).all()


def test_drawer_disjoint_episodes_and_their_descriptions(coded):
    task = coded_task(coded, ways=3, shots=2, query=3, drawers="disjoint", episodes="within_alphabet")
    sx, sy, qx, qy = task.sample(100, torch.Generator().manual_seed(4), "train")
    s_drawers, q_drawers = decode(sx)[1].view(100, 3, 2), decode(qx)[1].view(100, 3, 3)
    for s, q in zip(s_drawers.tolist(), q_drawers.tolist()):
        assert all(row == s[0] for row in s) and all(row == q[0] for row in q)  # the same drawers for every class
        assert len(set(s[0]) | set(q[0])) == 5  # support and query drawers are disjoint
    described = task.describe(100, torch.Generator().manual_seed(4), "train")
    assert [r["support_drawers"] for r in described] == s_drawers.tolist()
    assert [r["query_drawers"] for r in described] == q_drawers.tolist()
    cls = decode(sx)[0].view(100, 3, 2)[..., 0]
    assert [[task.classes.index(c) for c in r["characters"]] for r in described] == cls.tolist()
    # The default draws each class's images independently: drawers then meet across support and query.
    task = coded_task(coded, ways=3, shots=2, query=3)
    sx, _, qx, _ = task.sample(100, torch.Generator().manual_seed(4), "train")
    assert any(set(a) & set(b) for a, b in zip(decode(sx)[1].tolist(), decode(qx)[1].tolist()))


def test_default_episodes_are_drawn_as_before(coded):
    """Today's options (episodes=any, drawers=any, no augmentation) draw exactly what the original sampler drew."""
    task = coded_task(coded, rotations="as_classes", query=3)
    generator = torch.Generator().manual_seed(5)
    images, starts, counts = task.splits["train"]
    classes = torch.rand(7, len(counts), generator=generator).topk(3, dim=1).indices  # the original code, inline
    keys = torch.rand(7, 3, int(counts.max()), generator=generator)
    keys.masked_fill_(torch.arange(keys.shape[-1]) >= counts[classes][..., None], 2.0)
    index = (starts[classes][..., None] + keys.topk(4, dim=-1, largest=False).indices).flatten()
    expected = images[index].view(7, 3, 4, 1, 8, 8)
    sx, _, qx, _ = task.sample(7, torch.Generator().manual_seed(5), "train")
    assert torch.equal(sx.view(7, 3, 1, 1, 8, 8), expected[:, :, :1]) and torch.equal(qx.view(7, 3, 3, 1, 8, 8), expected[:, :, 1:])


@needs_shared
def test_affine_augmentation_distorts_training_images_only(tmp_path):
    from metarun.tasks.images import affine, affine_params

    options = dict(root=SHARED, cache_dir=tmp_path, ways=5, shots=1, query=2, rotations="per_task", split="alphabet",
                   val_alphabets=["Korean"], test_alphabets=["Latin"])
    plain, augmented = Omniglot(**options), Omniglot(augment="affine", **options)
    assert augmented.splits["train"][0].dtype == torch.uint8  # distorted as uint8, then scaled
    a = plain.sample(8, torch.Generator().manual_seed(0), "train")
    b = augmented.sample(8, torch.Generator().manual_seed(0), "train")
    c = augmented.sample(8, torch.Generator().manual_seed(0), "train")
    assert all(torch.equal(x, y) for x, y in zip(b, c))  # the task generator's draws: reproducible
    assert torch.equal(a[1], b[1]) and not torch.equal(a[0], b[0])
    # The same characters, moved a little: close in ink, far from identical pixel for pixel.
    ink_a, ink_b = a[0].sum((-1, -2, -3)), b[0].sum((-1, -2, -3))
    assert ((ink_b - ink_a).abs() / ink_a).median() < 0.35
    assert (a[0] - b[0]).abs().mean() > 0.01
    for split in ("val", "test"):  # never distorted
        assert all(torch.equal(x, y) for x, y in zip(plain.sample(4, torch.Generator().manual_seed(1), split),
                                                     augmented.sample(4, torch.Generator().manual_seed(1), split)))
    # Parameters within Koch et al.'s ranges, each component applied about half the time.
    p = affine_params(4000, 105, torch.Generator().manual_seed(0))
    assert p[:, 0].abs().max() <= 10 and p[:, 1:3].abs().max() <= 2 and ((p[:, 3] - 1).abs().max() <= 0.2)
    assert p[:, 4:].abs().max() <= 16.8 and 0.45 < (p[:, 0] != 0).float().mean() < 0.55
    identity = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    image = plain.splits["train"][0][:1]
    assert torch.allclose(affine(image, identity), image, atol=1e-6)


def test_batched_affine_equals_torchvision_affine_image_by_image():
    import torchvision.transforms.v2.functional as TF

    from metarun.tasks.images import affine, affine_params

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(300, 1, 28, 24, generator=g) > 0.7).to(torch.uint8) * 255  # not square: both axes' scaling
    params = affine_params(300, 28, g) * torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, 1.0])  # and far outside Koch's ranges
    params[:, 3] = params[:, 3].clamp(min=0.5)
    expected = torch.stack([TF.affine(img, angle=a, translate=[tx, ty], scale=sc, shear=[sx, sy],
                                      interpolation=TF.InterpolationMode.BILINEAR, fill=0)
                            for img, (a, tx, ty, sc, sx, sy) in zip(images, params.tolist())])
    got = affine(images, params)
    assert got.dtype == torch.uint8
    difference = (got.int() - expected.int()).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 1e-3  # uint8 rounding of float noise
    floats = images.float() / 255
    expected = torch.stack([TF.affine(img, angle=a, translate=[tx, ty], scale=sc, shear=[sx, sy],
                                      interpolation=TF.InterpolationMode.BILINEAR, fill=0)
                            for img, (a, tx, ty, sc, sx, sy) in zip(floats, params.tolist())])
    torch.testing.assert_close(affine(floats, params), expected, atol=1e-4, rtol=0)


def test_bad_episode_options_are_config_errors(coded):
    for options, key in ((dict(episodes="alphabet"), "task.episodes"), (dict(drawers="other"), "task.drawers"),
                         (dict(augment="koch"), "task.augment"), (dict(rotations="sometimes"), "task.rotations"),
                         (dict(rotated_splits=["train", "extra"]), "task.rotated_splits"),
                         (dict(test_alphabets=["Nowhere"]), "task.test_alphabets"),
                         (dict(val_alphabets=["Delta"], test_alphabets=["Delta"]), "task.test_alphabets"),
                         (dict(split="character"), "task.test_alphabets")):
        with pytest.raises(ConfigError) as e:
            coded_task(coded, **options)
        assert e.value.key == key, (options, e.value)


def test_within_alphabet_with_a_small_alphabet_is_one_line_and_exit_2(shared_data, tmp_path):
    from conftest import run_metarun

    result = run_metarun("task=omniglot", "model=conv4", f"task.root={shared_data}", f"task.cache_dir={tmp_path}",
                         "task.split=alphabet", "task.val_alphabets=[Korean]", "task.test_alphabets=[Latin]",
                         "task.episodes=within_alphabet", "task.ways=20", "task.rotations=per_task", "iterations=1",
                         cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("metarun: error: task.ways=20 is not allowed") and "Tagalog has 17 classes in the train split" in lines[0]
