"""Counting host<->device synchronisations, on any device (the CPU included), with a TorchDispatchMode.

On a GPU each of these drains the stream: reading a value (``.item()``, ``float(t)``, ``bool(t)``, ``if t:``),
an op whose output size depends on the data (``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``),
and a copy to the CPU. They are the same ops on the CPU, where they cost nothing, so a test on CPU can count
them and keep a training step free of them (tests/test_training.py, bench/train.py ``syncs_per_step``).

    with SyncCounter() as syncs:
        train_step(...)
    print(syncs.count, syncs.ops)

Only the thread that enters the mode is watched (DataLoader worker processes and threads are not: they do not
wait for the GPU's stream). Two limits: while the mode is active torch.compile runs its code eagerly, so the
count is that of the eager step; and a value read of a CPU tensor counts too, although on a GPU box it would not
wait for the device.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that make the host wait for the device: a value read back, or an output whose size depends on the data.
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
            aten.unique_consecutive}
COPIES = {aten._to_copy, aten.copy_}


def _is_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in (indices or ()))


class SyncCounter(TorchDispatchMode):
    """Counts the synchronising ops dispatched while active: ``count`` in all, ``ops`` by op name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet in SYNC_OPS:
            self.ops[packet.__name__] += 1
        elif packet is aten.index and _is_bool_index(args):
            self.ops["index(bool mask)"] += 1
        elif packet in COPIES:
            source = args[1] if packet is aten.copy_ else args[0]
            target = args[0].device if packet is aten.copy_ else kwargs.get("device")
            if (torch.is_tensor(source) and source.device.type != "cpu" and target is not None
                    and torch.device(target).type == "cpu"):
                self.ops["copy to cpu"] += 1
        return func(*args, **kwargs)
