"""Numerics of a training step, family-agnostic: mixed precision, the gradient scaler and the non-finite guard.

Everything here runs without host<->device synchronisation, so a CUDA step is queued ahead of the GPU:

- ``resolve_amp`` turns ``train.amp: auto`` into what the device can do (bf16 where supported, fp16 with a
  gradient scaler on older CUDA GPUs, fp32 on the CPU) and refuses a choice the device cannot run.
- ``Precision`` owns autocast, the fp16 ``GradScaler`` (state checkpointed) and a ``NonFiniteGuard``. A phase calls
  ``precision.backward(terms, ...)`` and ``precision.step(optimizer)``: the guard checks the phase's loss terms
  on the device and the optimisers skip the update on the device (fused Adam's ``found_inf``, ``RowAdam``'s
  masked rows), so a NaN never reaches the weights, and the run stops at its next read naming term and step.
- Under fp16 an overflow is expected now and then: the scaler skips that step and lowers its scale, as usual.
  A non-finite loss is only fatal when the scale has collapsed (``MIN_SCALE``), i.e. the values are really bad.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch

# Below this loss scale, fp16 overflow is no longer the explanation: the values are non-finite at any scale.
MIN_SCALE = 2.0 ** -8


class NonFiniteLossError(FloatingPointError):
    """A loss term or weight became NaN or Inf; its update was skipped and no checkpoint holds it."""


class PrecisionError(ValueError):
    """A mixed-precision choice this device cannot run."""


def resolve_amp(amp: str, device: torch.device) -> str:
    """``train.amp`` -> "bf16" | "fp16" | "none" for ``device``; refuses what cannot work there, saying why."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if amp == "auto":
            return "bf16" if bf16 else "fp16"
        if amp == "bf16" and not bf16:
            name = torch.cuda.get_device_name(device)
            raise PrecisionError(f"train.amp=bf16: {name} has no bfloat16 support; use train.amp=fp16 (with a "
                                 "gradient scaler) or auto")
        return amp
    if amp == "auto":
        return "none"  # CPU autocast is slower than fp32 for these convolutions
    if amp == "fp16" and device.type != "cpu":
        raise PrecisionError(f"train.amp=fp16 needs a CUDA GPU (device is {device.type})")
    return amp


def autocast_context(device: torch.device, amp: str):
    """The autocast region of a resolved ``amp`` (``resolve_amp``); a no-op for "none"."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    if amp != "none":
        raise PrecisionError(f"autocast needs a resolved amp (bf16, fp16 or none), got {amp!r}")
    return contextlib.nullcontext()


class NonFiniteGuard:
    """Remembers, on the device, the first step at which each loss term was non-finite.

    ``observe`` returns a 0-dim float flag (1.0: something is non-finite) that the optimisers take as
    ``found_inf`` to skip their update; ``check`` is the one host read, done at log and checkpoint steps.
    """

    def __init__(self):
        self.first_bad: dict[str, torch.Tensor] = {}  # term -> int64 step (-1: never)
        self.skipped: torch.Tensor | None = None  # updates skipped since the last check (fp16 overflows too)

    def observe(self, terms: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        bad = ~torch.isfinite(values)
        for name, flag in zip(terms, bad.unbind()):
            first = self.first_bad.get(name)
            if first is None:
                first = self.first_bad[name] = torch.full((), -1, dtype=torch.long, device=values.device)
            first.copy_(torch.where(flag & (first < 0), step, first))
        return bad.any().float()

    def count_skip(self, found_inf: torch.Tensor) -> None:
        self.skipped = found_inf.detach().clone() if self.skipped is None else self.skipped + found_inf

    def read(self) -> tuple[dict[str, int], int]:
        """(term -> first bad step, for terms that were non-finite; skipped updates): one host sync."""
        names = list(self.first_bad)
        if not names:
            return {}, 0
        flat = torch.stack([self.first_bad[n] for n in names]
                           + [(self.skipped if self.skipped is not None else self.first_bad[names[0]] * 0)
                              .round().long()]).tolist()
        self.skipped = None
        return {n: s for n, s in zip(names, flat[:-1]) if s >= 0}, int(flat[-1])


class Precision:
    """Autocast, gradient scaling and skip-on-non-finite for one run; see the module docstring.

    One ``GradScaler`` serves every optimiser of a step (PyTorch's pattern for several losses and optimisers):
    both phases scale by the same factor, which matters where a gradient accumulates over both (D's W).
    """

    def __init__(self, amp: str, device: torch.device, fatal_nonfinite: bool = True):
        self.amp, self.device = amp, device
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        self.guard = NonFiniteGuard()
        self._found_inf: dict[int, torch.Tensor] = {}

    def autocast(self):
        return autocast_context(self.device, self.amp)

    def backward(self, terms: dict[str, torch.Tensor], step: int, inputs: list[torch.Tensor] | None = None
                 ) -> torch.Tensor:
        """Backward of the sum of ``terms`` (scaled under fp16); returns the phase's device-side found_inf."""
        found_inf = self.guard.observe(terms, step)
        total = sum(terms.values())
        if self.scaler is not None:
            total = self.scaler.scale(total)
        # Non-finite values would poison fused kernels' inputs only; the update itself is skipped below.
        total.backward(inputs=inputs)
        return found_inf

    def step(self, optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
        """Applies ``optimizer``'s update unless ``found_inf`` (or, under fp16, an overflow) says skip it."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
            overflow = sum(v.to(found_inf.device) for v in
                           self.scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values())
            found_inf = torch.clamp(found_inf + overflow, max=1.0)
        guarded_step(optimizer, found_inf)
        self.guard.count_skip(found_inf)

    def update(self) -> None:
        """After the last optimiser of a step: the scaler's scale for the next step."""
        if self.scaler is not None:
            self.scaler.update()

    def check(self, step: int) -> int:
        """The one host read: raises NonFiniteLossError if a term went non-finite (for fp16: and the scale
        collapsed); returns the number of updates skipped since the last check."""
        bad, skipped = self.guard.read()
        if bad and (self.scaler is None or self.scaler.get_scale() < MIN_SCALE):
            name, first = min(bad.items(), key=lambda item: item[1])
            why = "" if self.scaler is None else f" (fp16 loss scale fell to {self.scaler.get_scale():g})"
            raise NonFiniteLossError(f"loss term '{name}' became NaN or Inf at step {first}{why}; the updates "
                                     "it fed were skipped and no checkpoint was written after it. "
                                     f"Stopped at step {step}: lower the learning rates or check the data.")
        if bad:  # fp16 overflows: forget them, the scaler has handled them
            for first in self.guard.first_bad.values():
                first.fill_(-1)
        return skipped

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def guarded_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """``optimizer.step()`` that leaves weights and state untouched where ``found_inf`` is 1, without a sync.

    Fused Adam takes ``found_inf`` natively (the mechanism GradScaler uses); ``RowAdam`` masks its rows. Other
    optimisers would need a host read to skip, so they are refused rather than silently synced.
    """
    if isinstance(optimizer, RowAdam):
        optimizer.step(found_inf=found_inf)
        return
    if not all(g.get("fused") for g in optimizer.param_groups):
        raise TypeError(f"{type(optimizer).__name__} cannot skip an update on the device; build it with "
                        "fused=True (see make_adam)")
    optimizer.grad_scale, optimizer.found_inf = None, found_inf
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


def make_adam(params: Iterable, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Fused Adam (one kernel for all tensors; step counters on the device; skips updates on ``found_inf``)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


class RowAdam(torch.optim.Optimizer):
    """Adam for an embedding matrix whose gradient is sparse (D's W): only the rows in the batch move.

    The same arithmetic as ``torch.optim.SparseAdam`` (lazy Adam: moments of untouched rows are not decayed),
    without its ``coalesce``, which on CUDA waits for the device every step. Duplicate rows in a batch are
    summed into a scratch buffer first, so each row gets one update with its whole gradient.
    The gradient is read from ``weight.grad`` as an uncoalesced sparse tensor (``nn.Embedding(sparse=True)``).
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None, found_inf: torch.Tensor | None = None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise TypeError("RowAdam takes the sparse gradient of nn.Embedding(sparse=True)")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["scratch"] = torch.zeros_like(p)
                rows, values = grad._indices()[0], grad._values()
                scratch = state["scratch"]
                scratch.index_add_(0, rows, values.to(scratch.dtype))
                g = scratch.index_select(0, rows)  # each row's summed gradient (duplicates read the same sum)
                scratch.index_fill_(0, rows, 0.0)
                keep = 1.0 if found_inf is None else 1.0 - found_inf
                step = state["step"].add_(keep)
                m = state["exp_avg"].index_select(0, rows).lerp_(g, 1 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bias1 = 1 - beta1 ** step.clamp(min=1)
                bias2 = 1 - beta2 ** step.clamp(min=1)
                update = m / bias1 / ((v / bias2).sqrt() + group["eps"]) * group["lr"]
                old = (p.index_select(0, rows), state["exp_avg"].index_select(0, rows),
                       state["exp_avg_sq"].index_select(0, rows))
                new = (old[0] - update, m, v)
                if found_inf is not None:
                    skip = found_inf.bool()
                    new = tuple(torch.where(skip, o, n) for o, n in zip(old, new))
                p.index_copy_(0, rows, new[0])
                state["exp_avg"].index_copy_(0, rows, new[1])
                state["exp_avg_sq"].index_copy_(0, rows, new[2])

    def state_dict(self):
        # The scratch buffer is always zero between steps: not worth a W-sized copy in every checkpoint.
        state = super().state_dict()
        state["state"] = {k: {n: t for n, t in s.items() if n != "scratch"} for k, s in state["state"].items()}
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                s = self.state.get(p)
                if s:
                    s["scratch"] = torch.zeros_like(p)
                    s["step"] = torch.as_tensor(s["step"], dtype=torch.float32, device=p.device)
