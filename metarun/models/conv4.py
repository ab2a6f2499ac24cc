"""The 4-block convolutional network of Finn et al. (2017) and Vinyals et al. (2016).

`downsample=maxpool` (Finn's mini-ImageNet net, Vinyals et al.): each block is 3x3 conv (64
filters) -> BatchNorm -> ReLU -> 2x2 max-pool (the code pools before the ReLU, which gives
identical outputs and gradients, see `conv_block`). `downsample=stride` (Finn's Omniglot net,
learn2learn's OmniglotCNN): 3x3 conv with stride 2 -> BatchNorm -> ReLU, no pooling.
The last feature map is flattened into the head's input, or with `global_pool=true` averaged over
its positions (Finn's Omniglot net and OmniglotCNN average the 2x2 map of a 28x28 input into 64
features). A linear `head` follows.

BatchNorm uses the statistics of the batch it sees and keeps no running averages
(`track_running_stats=False`), as MAML does: each task's support set and query set are
normalised by their own statistics (transductive). This makes the network a pure function
of its parameters, so it behaves the same under `vmap`, in the inner loop and in evaluation.
"""
import torch
from torch import nn

from metarun.config import ConfigError


class TaskBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics only, written with plain tensor ops.

    torch's fused batch-norm kernel gives wrong second-order gradients under `vmap` (its
    double-backward batching rule; seen with torch 2.14), which would silently corrupt MAML's
    meta-gradient. Mean and variance written out are exact to any order and vmap cleanly.
    """

    def __init__(self, num_features, eps=1e-5):
        super().__init__(num_features, eps=eps, track_running_stats=False)

    def forward(self, x):
        # Two-pass variance from the centred input: on CPU, torch.var/var_mean over (N, H, W)
        # of an NCHW tensor is ~10x slower than a mean plus a square-mean, and the centred input
        # is needed for the output anyway. addcmul does the scale-and-shift in one pass.
        centered = x - x.mean(dim=(0, 2, 3), keepdim=True)
        var = centered.square().mean(dim=(0, 2, 3), keepdim=True)
        scale = self.weight[:, None, None] * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias[:, None, None], centered, scale)


def conv_block(in_channels, out_channels, downsample="maxpool"):
    if downsample == "stride":
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), TaskBatchNorm2d(out_channels), nn.ReLU())
    # Max-pool before ReLU: the two commute exactly (ReLU is monotone; gradients too, ties
    # included), and the ReLU then runs on a quarter of the activations.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        TaskBatchNorm2d(out_channels),
        nn.MaxPool2d(2),
        nn.ReLU(),
    )


class SpatialMean(nn.Module):
    """(n, C, H, W) -> (n, C): the mean over positions."""

    def forward(self, x):
        return x.mean(dim=(-2, -1))


class Conv4(nn.Module):
    def __init__(self, input_shape, output_dim, channels=64, blocks=4, head_hidden=0, downsample="maxpool", global_pool=False):
        super().__init__()
        if downsample not in ("maxpool", "stride"):
            raise ConfigError("model.downsample", downsample, "maxpool or stride")
        if not isinstance(global_pool, bool):
            raise ConfigError("model.global_pool", global_pool, "true or false")
        in_channels = input_shape[0]
        self.body = nn.Sequential(
            *[conv_block(in_channels if i == 0 else channels, channels, downsample) for i in range(blocks)],
            SpatialMean() if global_pool else nn.Flatten(),
        )
        with torch.no_grad():
            features = self.body(torch.zeros(2, *input_shape)).shape[1]
        # head_hidden > 0 gives a two-layer head: the nonconvex inner problem of Ji et al. (2020).
        if head_hidden:
            self.head = nn.Sequential(nn.Linear(features, head_hidden), nn.ReLU(), nn.Linear(head_hidden, output_dim))
        else:
            self.head = nn.Linear(features, output_dim)

    def forward(self, x):
        return self.head(self.body(x))
