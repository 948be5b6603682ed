"""Shared by the training tests of both families: synchronising ops that more training steps add."""
from __future__ import annotations

from utils.syncs import SyncCounter


def syncs_added_by_steps(train, short: int, long: int) -> dict[str, int]:
    """``train(steps)`` runs meta_train for ``steps`` with every cadence (log, image, checkpoint) at the end;
    returns, per op, how many more synchronising ops the ``long`` run made than the ``short`` one: the steps in
    between are plain training steps, so a step that never waits for the device adds none."""
    counts = {}
    for steps in (short, long):
        with SyncCounter() as syncs:
            train(steps)
        counts[steps] = syncs.ops
    return {op: counts[long][op] - counts[short].get(op, 0) for op in counts[long]
            if counts[long][op] != counts[short].get(op, 0)}


def end_cadences(steps: int) -> list[str]:
    """Overrides that put logging, images and checkpoints on the last step only."""
    return [f"train.steps={steps}", f"train.log_every={steps}", f"train.image_every={steps}",
            f"train.checkpoint_every={steps}"]
