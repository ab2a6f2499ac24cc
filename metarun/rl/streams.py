"""Counter-based random numbers: one stream per lifetime, independent of how lifetimes are batched.

`uniform(seed, counter, stream)` hashes (seed, counter, stream) to a float in [0, 1) with integer
ops on the tensors' device. A lifetime drawn with seed s gets the same policy initialisation and
the same action noise whether it runs alone, in a batch of 32, or in an evaluation chunk of any
size: batched runs equal per-lifetime loops exactly, and evaluation figures cannot depend on
`eval_chunk`. The seeds themselves come from the run's CPU generator (task.sample), so a run seed
gives the same lifetimes on every device.

The mixer is a 32-bit integer hash (the "lowbias32" finaliser of C. Wellons' hash prospector)
computed in int64 with explicit masking, so right shifts are logical and products wrap as uint32.
"""
import torch

MASK = 0xFFFFFFFF
GOLDEN = 0x9E3779B9


def hash32(x):
    """A bijective mix of the low 32 bits of the int64 tensor `x`; result in [0, 2^32)."""
    x = x & MASK
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK
    return x ^ (x >> 16)


def uniform(seed, counter, stream=0):
    """Floats in [0, 1): seed and counter broadcast together (int64 tensors); `stream` is a small int."""
    key = hash32(seed * GOLDEN + stream)
    x = hash32(key ^ hash32(counter + stream * 0x632BE5AB))
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))
