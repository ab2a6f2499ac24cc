"""What the few-shot image task families share: decoding, the uint8 cache and the episode sampler.

Every data set is decoded and resized once into one uint8 tensor of shape (N, C, H, W) whose
images are grouped by class (class k owns rows ``starts[k] : starts[k] + counts[k]``). That tensor
is cached on disk, keyed by data set, source folder, image size and `FORMAT`, and rebuilt when
the source files change (a fingerprint of their names, sizes and modification times).

An episode is then pure tensor indexing, for all tasks of a meta-batch at once:

    classes  = `ways` distinct random classes of the split, in random order        (per task)
    examples = `shots + query` distinct random images of each chosen class         (per class)
    label of a class = its position in that order (so the assignment is random per task)

Model input: float32 in [0, 1] (pixel / 255), no mean/std normalisation (as in MAML's code;
conv4's BatchNorm normalises per task anyway). `load_images` applies exactly this preprocessing
to arbitrary image files.
"""
import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.io import ImageReadMode, decode_image

from metarun.checkpoint import atomic_write
from metarun.config import ConfigError, DataError

FORMAT = 1  # bump when the cached tensors change meaning (preprocessing, layout)
SPLITS = ("train", "val", "test")
FLOAT_BUDGET = 2**30  # bytes: a split up to this size as float32 is kept as float32 in memory


def data_root(root=None):
    """`task.root`, else the environment variable METARUN_DATA, else ./data."""
    return Path(root or os.environ.get("METARUN_DATA") or "data").expanduser().absolute()


def cache_root(cache_dir=None):
    """`task.cache_dir`, else METARUN_CACHE, else ~/.cache/metarun (the data root may be read-only)."""
    return Path(cache_dir or os.environ.get("METARUN_CACHE") or "~/.cache/metarun").expanduser()


def fingerprint(files):
    """A digest of the file names, sizes and modification times: changes when the source does."""
    h = hashlib.sha1()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached(cache_dir, name, key, source_fingerprint, build):
    """Load the cached dict for `key`, or `build()` it and write it atomically.

    The dict holds "images" (uint8, N x C x H x W, grouped by class), "counts" (int64, per class)
    and "classes" (names), plus whatever a data set adds (lists of strings).
    """
    digest = hashlib.sha1(json.dumps({**key, "format": FORMAT}, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"{name}-{digest}.pt"
    if path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("format") == FORMAT and data.get("fingerprint") == source_fingerprint:
                return data
        except Exception:  # a truncated or foreign file is simply rebuilt
            pass
    data = {**build(), "format": FORMAT, "fingerprint": source_fingerprint}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(data, f))
    except OSError as e:
        warnings.warn(f"metarun: could not write the image cache {path} ({e}); set task.cache_dir or METARUN_CACHE "
                      "to a writable folder to avoid decoding again next time", stacklevel=2)
    return data


def download(url, root, filename, md5):
    """Fetch and unpack an archive with torchvision's downloader, as a DataError when it fails."""
    try:
        download_and_extract_archive(url, download_root=str(root), filename=filename, md5=md5)
    except Exception as e:  # URLError, OSError (read-only root), RuntimeError (checksum)
        raise DataError(f"download of {url} into {root} failed ({type(e).__name__}: {e}); "
                        f"without internet, place the data under {root} yourself or set METARUN_DATA") from None


def read_image(path, channels, size):
    """Decode one image file (any format torchvision reads) to uint8 (channels, size, size), antialiased."""
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(str(path), mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except Exception as e:  # missing file, not an image, truncated data
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return resize(image, size)


def resize(images, size):
    """Resize uint8 image(s) to size x size (no crop), with antialiasing when shrinking."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return TF.resize(images, [size, size], antialias=True)


class ImageTaskFamily:
    """N-way K-shot classification episodes over a class-grouped uint8 image tensor.

    Subclasses load their data and call `set_splits({split: (images, counts)})`; `invert=True`
    maps pixel p to 255 - p (Omniglot: strokes become 1 on a 0 background).
    """

    classification = True
    invert = False

    def __init__(self, ways, shots, query, image_size, channels, device="cpu"):
        self.ways, self.shots, self.query, self.image_size, self.channels = ways, shots, query, image_size, channels
        self.device = torch.device(device)
        self.input_shape = (channels, image_size, image_size)
        self.output_dim = ways

    @staticmethod
    def loss_fn(outputs, targets):
        return F.cross_entropy(outputs, targets)

    def set_splits(self, splits, keep_uint8=()):
        """Keep each split's (images, counts) and check that an episode fits in it.

        Splits in `keep_uint8` stay uint8 (augmentation works on the uint8 images)."""
        self.splits = {}
        for split, (images, counts) in splits.items():
            counts = torch.as_tensor(counts, dtype=torch.int64)
            if len(counts) < self.ways:
                raise ConfigError("task.ways", self.ways, f"at most {len(counts)}: the {split} split has {len(counts)} classes")
            need = self.shots + self.query
            if need > counts.min():
                raise ConfigError("task.shots", self.shots, f"shots + query ({self.shots} + {self.query}) at most "
                                  f"{int(counts.min())}, the fewest images of a class in the {split} split")
            starts = torch.cumsum(counts, 0) - counts
            # Small splits (Omniglot) are held as float32, so an episode is a plain row copy;
            # large ones (mini-ImageNet) stay uint8 and each episode is converted on the fly.
            if images.numel() * 4 <= FLOAT_BUDGET and split not in keep_uint8:
                images = images.float().div_(255)
            # The images move to the device once; episodes are then gathered there.
            self.splits[split] = (images.contiguous().to(self.device), starts, counts)

    def sample(self, n, generator, split="train"):
        """`n` episodes: support (n, ways*shots, C, H, W) and query (n, ways*query, C, H, W), labels int64."""
        return self.episode(self.draw(n, generator, split), split)

    def draw(self, n, generator, split):
        """The random choices of `n` episodes, as CPU index tensors; `episode` turns them into images.

        "classes" (n, ways): the split's classes behind labels 0..ways-1; "within" (n, ways, shots +
        query): image offsets inside each class, support first. Subclasses may add "rotations"
        (n, ways): quarter turns per class, and "affine" (n * ways * (shots + query), 6): augmentation parameters.
        """
        _, _, counts = self.splits[split]
        k = self.shots + self.query
        # The `ways` classes with the largest random keys, in key order: a uniformly random ordered
        # choice, and a class's label is its position, so the class-to-label map is random per task.
        # Random keys are drawn on the CPU (the generator's device): a seed gives the same episodes on
        # every device; only the image indices move to the device.
        classes = torch.rand(n, len(counts), generator=generator, device="cpu").topk(self.ways, dim=1).indices
        return {"classes": classes, "within": self.draw_images(classes, counts, k, generator)}

    @staticmethod
    def draw_images(classes, counts, k, generator):
        """`k` distinct random images of each chosen class: the k smallest of random keys, padding slots never win."""
        chosen = counts[classes]
        keys = torch.rand(*classes.shape, int(counts.max()), generator=generator, device="cpu")
        keys.masked_fill_(torch.arange(keys.shape[-1], device="cpu") >= chosen[..., None], 2.0)
        return keys.topk(k, dim=-1, largest=False).indices

    def episode(self, drawn, split):
        """Gather the drawn images (and rotate or augment them) into (support_x, support_y, query_x, query_y)."""
        images, starts, _ = self.splits[split]
        classes, within = drawn["classes"], drawn["within"]
        n, k = within.shape[0], within.shape[-1]
        shape = images.shape[1:]
        index = (starts[classes][..., None] + within).flatten().to(self.device)
        x = images.index_select(0, index).view(n, self.ways, k, *shape)
        if "rotations" in drawn:  # one quarter-turn count per class of a task, for all its images
            x = rotate_classes(x, drawn["rotations"].to(self.device))
        if "affine" in drawn:
            x = affine(x.flatten(0, 2), drawn["affine"]).view(n, self.ways, k, *shape)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        labels = torch.arange(self.ways, device=self.device)
        support_x = x[:, :, : self.shots].reshape(n, self.ways * self.shots, *shape)
        query_x = x[:, :, self.shots :].reshape(n, self.ways * self.query, *shape)
        support_y = labels.repeat_interleave(self.shots).repeat(n, 1)
        query_y = labels.repeat_interleave(self.query).repeat(n, 1)
        return support_x, support_y, query_x, query_y

    def preprocess(self):
        """What turns an image file into a model input, and the model's output size: all that
        prediction needs (`ImageInputs`), written into the run dir so the data set is not."""
        return {"input_shape": list(self.input_shape), "output_dim": self.output_dim, "channels": self.channels,
                "image_size": self.image_size, "invert": self.invert, "scale": 255,
                "resize": "antialiased bilinear to image_size x image_size, no crop", "classification": self.classification}

    def load_images(self, paths):
        """Image files of any size, RGB or grayscale -> float (n, C, H, W), preprocessed as in training."""
        return read_images(paths, self.channels, self.image_size, self.invert).float().div_(255).to(self.device)


def read_images(paths, channels, size, invert=False):
    """Decode and resize image files into one uint8 tensor (n, channels, size, size); `invert`: 255 - p."""
    if not paths:
        return torch.empty(0, channels, size, size, dtype=torch.uint8)
    images = torch.stack([read_image(p, channels, size) for p in paths])
    return 255 - images if invert else images


def decode_classes(files_per_class, channels, size, invert=False):
    """Decode every file once into the cache layout: images grouped by class, and per-class counts."""
    images = read_images([f for files in files_per_class for f in files], channels, size, invert)
    return {"images": images, "counts": torch.tensor([len(f) for f in files_per_class])}


def group_by_class(images, labels):
    """uint8 images (N, C, H, W) with integer class labels -> class-grouped images, counts per label 0..max."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    order = torch.argsort(labels, stable=True)
    return images[order].contiguous(), torch.bincount(labels)


def select_classes(images, counts, keep):
    """The images and counts of the classes `keep` (indices), in that order."""
    starts = torch.cumsum(counts, 0) - counts
    index = torch.cat([torch.arange(starts[c], starts[c] + counts[c]) for c in keep])
    return images[index], counts[keep]


def rotate_classes(x, quarter_turns):
    """x (n, ways, k, C, H, W): class j of task i rotated by quarter_turns[i, j] * 90 degrees."""
    out = x.clone()
    for turns in (1, 2, 3):
        chosen = quarter_turns == turns
        out[chosen] = torch.rot90(x[chosen], turns, dims=(-2, -1))
    return out


# Koch, Zemel and Salakhutdinov (2015)'s affine distortions of 105x105 characters: each component is
# applied with probability 1/2: rotation in [-10, 10] degrees, shears in [-0.3, 0.3] (as angles,
# atan(0.3) = 16.7 degrees), scale in [0.8, 1.2] (one factor for both axes: torchvision's affine
# has a single scale, Koch et al. drew one per axis) and translations in [-2, 2] pixels of 105.
AFFINE_RANGES = {"angle": 10.0, "shear": math.degrees(math.atan(0.3)), "scale": 0.2, "translate": 2 / 105}


def affine_params(m, size, generator):
    """(m, 6) CPU tensor of per-image parameters: angle, tx, ty (pixels), scale, shear_x, shear_y (degrees);
    a component whose coin says no is the identity."""
    u = torch.rand(m, 6, generator=generator, device="cpu") * 2 - 1  # U[-1, 1]
    on = torch.rand(m, 4, generator=generator, device="cpu") < 0.5  # rotation, shear, scale, translation
    r = AFFINE_RANGES
    return torch.stack([
        u[:, 0] * r["angle"] * on[:, 0],
        u[:, 1] * r["translate"] * size * on[:, 3],
        u[:, 2] * r["translate"] * size * on[:, 3],
        1 + u[:, 3] * r["scale"] * on[:, 2],
        u[:, 4] * r["shear"] * on[:, 1],
        u[:, 5] * r["shear"] * on[:, 1],
    ], 1)


def affine(images, params):
    """Each image (m, C, H, W), uint8 or float, through its own affine map (bilinear, zero fill), all at once.

    torchvision's `affine` (about the image centre; rotation, shear, one scale, translation in
    pixels) batched into one `grid_sample`: the inverse matrix of each image is torchvision's
    (`_get_inverse_affine_matrix`), the grid its pixel-centred one, and zero fill multiplies by the
    resampled all-ones mask as torchvision does. Image by image it equals `TF.affine` up to float
    rounding (tests/test_omniglot.py); one call instead of one per image makes a 20-way episode
    batch several times cheaper to distort.
    """
    m, _, h, w = images.shape
    p = params.double().cpu()  # the matrices in float64, as torchvision computes them (in Python floats)
    angle, shear_x, shear_y = torch.deg2rad(p[:, [0, 4, 5]]).unbind(1)
    tx, ty, scale = p[:, 1], p[:, 2], p[:, 3]
    a = torch.cos(angle - shear_y) / torch.cos(shear_y)
    b = -torch.cos(angle - shear_y) * torch.tan(shear_x) / torch.cos(shear_y) - torch.sin(angle)
    c = torch.sin(angle - shear_y) / torch.cos(shear_y)
    d = -torch.sin(angle - shear_y) * torch.tan(shear_x) / torch.cos(shear_y) + torch.cos(angle)
    inverse = torch.stack([d, -b, -c, a], 1).view(m, 2, 2) / scale.view(m, 1, 1)  # of (rotation, shear) x scale
    shift = -(inverse @ torch.stack([tx, ty], 1).unsqueeze(-1))  # then undo the translation
    half = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    # Pixel coordinates about the centre -> grid_sample's [-1, 1] (align_corners=False: x_n = x / (w/2)).
    theta = torch.cat([inverse * half.view(1, 1, 2) / half.view(1, 2, 1), shift / half.view(1, 2, 1)], 2)
    grid = F.affine_grid(theta.to(torch.float32), [m, 1, h, w], align_corners=False).to(images.device)
    x = images.float()
    out = F.grid_sample(torch.cat([x, torch.ones_like(x[:, :1])], 1), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    out = out[:, :-1] * out[:, -1:]
    return out.round().to(images.dtype) if not images.dtype.is_floating_point else out.to(images.dtype)


class ImageInputs:
    """A trained run's input side without its data set: `load_images`, `input_shape`, `output_dim`,
    `classification`, `loss_fn`, from the `preprocess()` record the run wrote (preprocess.json).

    `load_learner` uses it in place of the task family, so prediction needs only the run dir.
    """

    def __init__(self, input_shape, output_dim, channels, image_size, invert, scale=255, classification=True,
                 device="cpu", **_):
        self.input_shape, self.output_dim = tuple(input_shape), output_dim
        self.channels, self.image_size, self.invert, self.scale = channels, image_size, invert, scale
        self.classification, self.device = classification, torch.device(device)

    loss_fn = staticmethod(ImageTaskFamily.loss_fn)

    def load_images(self, paths):
        return read_images(paths, self.channels, self.image_size, self.invert).float().div_(self.scale).to(self.device)

    preprocess = ImageTaskFamily.preprocess
