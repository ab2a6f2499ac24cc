"""mini-ImageNet, CIFAR-FS and FC100 readers on small generated files in the real formats."""
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from torchvision.io import write_jpeg, write_png

from metarun.config import ConfigError, DataError
from metarun.tasks.cifar_fs import CIFAR_FS_TEST, CIFAR_FS_TRAIN, CIFAR_FS_VAL, CIFARFS, FC100, FC100_TEST, FC100_TRAIN, FC100_VAL
from metarun.tasks.mini_imagenet import MiniImageNet
from metarun.train import run

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

# The CIFAR-100 superclasses and their classes (the dataset's documentation).
SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE = sorted(c for cs in SUPERCLASSES.values() for c in cs)
COARSE = sorted(SUPERCLASSES)
COARSE_OF = {c: COARSE.index(s) for s, cs in SUPERCLASSES.items() for c in cs}


def class_value(cls):
    return (cls * 37 + 11) % 251  # distinct for the classes used


def labels_consistent(sx, sy, qx, qy, ways):
    """One class (pixel value at (0, 0, 0)) per label within each task, and different classes per label."""
    for t in range(sx.shape[0]):
        values = [set(sx[t][sy[t] == j][:, 0, 0, 0].tolist()) | set(qx[t][qy[t] == j][:, 0, 0, 0].tolist()) for j in range(ways)]
        if not all(len(v) == 1 for v in values) or len({v.pop() for v in values}) != ways:
            return False
    return True


# ---------------------------------------------------------------- CIFAR-FS / FC100


def test_published_class_lists():
    cifar_fs = [CIFAR_FS_TRAIN, CIFAR_FS_VAL, CIFAR_FS_TEST]
    assert [len(s) for s in cifar_fs] == [64, 16, 20]
    assert sorted(sum(cifar_fs, [])) == FINE  # a partition of the 100 classes
    fc100 = [FC100_TRAIN, FC100_VAL, FC100_TEST]
    assert [len(s) for s in fc100] == [12, 4, 4] and sorted(sum(fc100, [])) == COARSE
    # Oreshkin et al.'s superclass indices
    assert [COARSE.index(s) for s in FC100_VAL] == [8, 11, 13, 16]
    assert [COARSE.index(s) for s in FC100_TEST] == [0, 7, 12, 14]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """cifar-100-python/{train,test,meta} with 4 train + 2 test images per class; pixel value encodes the class."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "cifar-100-python"
    folder.mkdir()
    for name, per_class in (("train", 4), ("test", 2)):
        fine = np.repeat(np.arange(100), per_class)
        rng = np.random.default_rng(0)
        rng.shuffle(fine)
        data = np.zeros((len(fine), 3, 32, 32), dtype=np.uint8)
        data[:] = np.array([class_value(c) for c in fine], dtype=np.uint8)[:, None, None, None]
        data[:, 1, 0, 0] = np.arange(len(fine)) % 200  # tells images apart
        entry = {"filenames": [f"{i}.png" for i in range(len(fine))], "batch_label": name,
                 "fine_labels": fine.tolist(), "coarse_labels": [COARSE_OF[FINE[c]] for c in fine],
                 "data": data.reshape(len(fine), -1)}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": FINE, "coarse_label_names": COARSE}, f, protocol=2)
    return root


def test_cifar_fs_reader(cifar_root, tmp_path):
    task = CIFARFS(root=cifar_root, cache_dir=tmp_path, ways=5, shots=1, query=5)
    assert task.input_shape == (3, 32, 32) and task.output_dim == 5
    for split, names in (("train", CIFAR_FS_TRAIN), ("val", CIFAR_FS_VAL), ("test", CIFAR_FS_TEST)):
        images, _, counts = task.splits[split]
        assert counts.tolist() == [6] * len(names)  # train and test images pooled
        # the class values in the split tensor are exactly those of the split's classes
        expected = [class_value(FINE.index(n)) / 255 for n in names]
        assert images[:, 0, 0, 0].view(len(names), 6).unique(dim=1).flatten().tolist() == pytest.approx(expected)
    sx, sy, qx, qy = task.sample(6, torch.Generator().manual_seed(0), "test")
    assert sx.shape == (6, 5, 3, 32, 32) and qx.shape == (6, 25, 3, 32, 32)
    assert labels_consistent(sx, sy, qx, qy, 5)


def test_fc100_reader_splits_by_superclass(cifar_root, tmp_path):
    task = FC100(root=cifar_root, cache_dir=tmp_path, ways=5, shots=1, query=1, image_size=16)
    assert task.input_shape == (3, 16, 16)
    for split, superclasses in (("train", FC100_TRAIN), ("val", FC100_VAL), ("test", FC100_TEST)):
        names = sorted(c for s in superclasses for c in SUPERCLASSES[s])
        expected = [class_value(FINE.index(n)) / 255 for n in names]
        values = task.splits[split][0][:, 0, 0, 0].view(len(names), 6).unique(dim=1).flatten().tolist()
        assert values == pytest.approx(expected, abs=1 / 255)  # resized constant images stay constant
    assert labels_consistent(*task.sample(4, torch.Generator().manual_seed(1), "val"), 5)
    # CIFAR-FS reused the same cache file
    CIFARFS(root=cifar_root, cache_dir=tmp_path, ways=5, shots=1, query=1, image_size=16)
    assert len(list(tmp_path.glob("cifar100-*.pt"))) == 1


def test_cifar_errors(cifar_root, tmp_path):
    with pytest.raises(DataError, match="cifar-100-python/train.*task.download=true.*METARUN_DATA"):
        CIFARFS(root=tmp_path / "nowhere", cache_dir=tmp_path)
    with pytest.raises(ConfigError) as e:
        CIFARFS(root=cifar_root, cache_dir=tmp_path, ways=17, query=1)  # val has 16 classes
    assert e.value.key == "task.ways"
    with pytest.raises(ConfigError) as e:
        FC100(root=cifar_root, cache_dir=tmp_path, shots=5, query=2)  # 6 images per class here
    assert e.value.key == "task.shots"
    bad = tmp_path / "bad" / "cifar-100-python"
    bad.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (bad / name).write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read CIFAR-100 file"):
        CIFARFS(root=bad.parent, cache_dir=tmp_path)


# ---------------------------------------------------------------- mini-ImageNet

SPLIT_CLASSES = {"train": 6, "val": 5, "test": 5}


def write_pickles(folder, per_class=8):
    folder.mkdir(parents=True, exist_ok=True)
    cls = 0
    for split, n in SPLIT_CLASSES.items():
        class_dict = {f"n{cls + c:08d}": list(range(c, n * per_class, n)) for c in range(n)}  # interleaved rows
        order = np.empty(n * per_class, dtype=np.int64)  # the class of each row
        for name, rows in class_dict.items():
            order[rows] = int(name[1:])
        images = np.zeros((n * per_class, 84, 84, 3), dtype=np.uint8)
        images[:] = np.array([class_value(k) for k in order], dtype=np.uint8)[:, None, None, None]
        images[:, 0, 1, 1] = np.arange(n * per_class)
        cls += n
        with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)


def test_mini_imagenet_pickles(tmp_path):
    write_pickles(tmp_path / "data" / "mini-imagenet")
    task = MiniImageNet(root=tmp_path / "data", cache_dir=tmp_path / "cache", ways=5, shots=2, query=3)
    assert task.input_shape == (3, 84, 84)
    assert {s: len(v[2]) for s, v in task.splits.items()} == SPLIT_CLASSES
    cls = 0
    for split, n in SPLIT_CLASSES.items():
        values = task.splits[split][0][:, 0, 0, 0].view(n, 8)
        assert torch.equal(values, values[:, :1].expand(n, 8))  # grouped by class
        assert values[:, 0].tolist() == pytest.approx([class_value(k) / 255 for k in range(cls, cls + n)])
        cls += n
    sx, sy, qx, qy = task.sample(5, torch.Generator().manual_seed(0), "train")
    assert sx.shape == (5, 10, 3, 84, 84) and qx.shape == (5, 15, 3, 84, 84)
    assert labels_consistent(sx, sy, qx, qy, 5)
    small = MiniImageNet(root=tmp_path / "data", cache_dir=tmp_path / "cache", image_size=32, ways=5, shots=1, query=1)
    assert small.splits["test"][0].shape[1:] == (3, 32, 32)


def test_mini_imagenet_csv_layout(tmp_path):
    folder = tmp_path / "data" / "mini-imagenet"
    (folder / "images").mkdir(parents=True)
    cls = 0
    for split, n in SPLIT_CLASSES.items():
        rows = []
        for c in range(n):
            for i in range(4):
                name = f"n{cls:08d}{i:08d}.jpg"
                image = torch.full((3, 60 + 10 * i, 90), class_value(cls), dtype=torch.uint8)  # any size
                if i % 2:
                    write_jpeg(image, str(folder / "images" / name), quality=100)
                else:
                    name = name.replace(".jpg", ".png")
                    write_png(image, str(folder / "images" / name))
                rows.append((name, f"n{cls:08d}"))
            cls += 1
        pd.DataFrame(rows, columns=["filename", "label"]).to_csv(folder / f"{split}.csv", index=False)
    task = MiniImageNet(root=tmp_path / "data", cache_dir=tmp_path / "cache", ways=5, shots=1, query=3, image_size=21)
    assert {s: v[2].tolist() for s, v in task.splits.items()} == {s: [4] * n for s, n in SPLIT_CLASSES.items()}
    assert task.splits["val"][0].shape == (20, 3, 21, 21)
    assert labels_consistent(*task.sample(3, torch.Generator().manual_seed(0), "val"), 5)
    # load_images = the training preprocessing, for a file of the data set
    file = folder / "images" / pd.read_csv(folder / "test.csv")["filename"][0]
    assert torch.equal(task.load_images([file])[0], task.splits["test"][0][0])
    # an image listed in a CSV but absent is named
    (folder / "images" / file.name).unlink()
    with pytest.raises(DataError, match=file.name):
        MiniImageNet(root=tmp_path / "data", cache_dir=tmp_path / "cache")


def test_mini_imagenet_errors(tmp_path):
    with pytest.raises(DataError, match="mini-imagenet-cache-.*train,val,test.*csv.*METARUN_DATA"):
        MiniImageNet(root=tmp_path, cache_dir=tmp_path)
    folder = tmp_path / "mini-imagenet"
    folder.mkdir()
    for split in SPLIT_CLASSES:
        (folder / f"mini-imagenet-cache-{split}.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read mini-ImageNet file .*mini-imagenet-cache-train.pkl"):
        MiniImageNet(root=tmp_path, cache_dir=tmp_path)


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("task_name, algo", [("cifar_fs", "maml"), ("fc100", "anil"), ("mini_imagenet", "anil"), ("mini_imagenet", "maml")])
def test_tiny_runs_on_fixture_data(task_name, algo, cifar_root, tmp_path, monkeypatch):
    """MAML and ANIL with conv4 on 3-channel images, through the real config files and the run loop."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    root = cifar_root
    if task_name == "mini_imagenet":
        root = tmp_path / "data"
        write_pickles(root / "mini-imagenet", per_class=4)
    overrides = [f"task={task_name}", f"algo={algo}", "model=conv4", "model.channels=4", f"task.root={root}",
                 f"task.cache_dir={tmp_path / 'cache'}", "task.query=1", "iterations=2", "meta_batch_size=2",
                 "eval_tasks=6", "eval_steps=3", "progress=false", "algo.inner_lr=0.5"]
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    # The reported test figures equal a plain per-task computation on the same tasks (autograd,
    # one task at a time, no vmap): the 3-channel image path evaluates what it claims to.
    from metarun.checkpoint import load
    from metarun.evaluate import task_set
    from metarun.train import build

    task, model, _, algo = build(cfg)
    model.load_state_dict(load(tmp_path / "run" / "checkpoint.pt")["model"])
    per_step = [[] for _ in range(4)]
    for sx, sy, qx, qy in task_set(task, "test", 6, cfg.eval_seed, 6):
        for i in range(len(sx)):
            params = {k: v.detach().clone().requires_grad_(k in algo.adapted) for k, v in model.named_parameters()}
            for step in range(4):
                with torch.no_grad():
                    out = torch.func.functional_call(model, params, (qx[i],))
                per_step[step].append((out.argmax(-1) == qy[i]).float().mean().item())
                loss = task.loss_fn(torch.func.functional_call(model, params, (sx[i],)), sy[i])
                grads = torch.autograd.grad(loss, [params[k] for k in algo.adapted])
                for k, g in zip(algo.adapted, grads):
                    params[k] = (params[k] - 0.5 * g).detach().requires_grad_()
    for step in range(4):
        assert summary[f"test/accuracy_step{step}"] == pytest.approx(sum(per_step[step]) / 6, abs=1e-6), step
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
