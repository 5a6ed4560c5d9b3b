"""Clip and optimizer step for every member of a batch at once, on the stacked weights.

A batch's per-member update (``batching.BatchedTrainer``: each member's clipper, then its torch
optimizer over views of its slices) costs tens of small kernels per member: at 64 members the host
launching them, not the device, sets the pace. For the sweep's common case (global-norm clipping
with SGD or Adam, members differing in threshold and learning rate) the same arithmetic runs once
over the member axis: per-member norms, coefficients and steps as (E,) tensors. It mirrors
``clip_grads_with_norm_`` and torch's single-tensor SGD/Adam formula for formula, and the tests hold
it to those.

Other mixes (another clip method, another optimizer, hyperparameters beyond the learning rate that
differ) keep the per-member path, which is exact by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from clipsweep.clipping import ClipStats
from clipsweep.clipping.base import NORM_EPS
from clipsweep.clipping.norm import NormClip

_SHARED_OPTIONS = {
    torch.optim.SGD: ("momentum", "dampening", "nesterov", "weight_decay", "maximize", "differentiable"),
    torch.optim.Adam: (
        "betas",
        "eps",
        "weight_decay",
        "amsgrad",
        "maximize",
        "decoupled_weight_decay",
        "differentiable",
    ),
}
"""Options every member must share for the fused step (``lr`` may differ)."""


class FusedUpdate:
    """Norm clipping and an SGD/Adam step over the member axis (see the module's docstring)."""

    def __init__(self, weights: Sequence[Tensor], thresholds: Sequence[float], optimizer: type, options: dict) -> None:
        self.weights = list(weights)
        members = self.weights[0].shape[0]
        device = self.weights[0].device
        self.thresholds = torch.tensor(thresholds, dtype=torch.float32, device=device)
        self.lrs = torch.tensor([group["lr"] for group in options["groups"]], dtype=torch.float32, device=device)
        self.optimizer, self.options = optimizer, options
        self.state: list[dict[str, Tensor]] = [{} for _ in self.weights]
        self.steps = 0
        self.members = members
        self._active: tuple[int, ...] | None = None
        self._rates = self.lrs

    @classmethod
    def for_members(
        cls, weights: Sequence[Tensor], clippers: Sequence[object], optimizers: Sequence[torch.optim.Optimizer]
    ) -> FusedUpdate | None:
        """The fused update of these members, or None when they need the per-member path."""
        if not all(type(c) is NormClip and c.norm_type == 2.0 for c in clippers):
            return None
        optimizer = type(optimizers[0])
        if optimizer not in _SHARED_OPTIONS or any(
            type(o) is not optimizer or len(o.param_groups) != 1 for o in optimizers
        ):
            return None
        groups = [o.param_groups[0] for o in optimizers]
        shared = {name: groups[0].get(name) for name in _SHARED_OPTIONS[optimizer]}
        same = all(group.get(name) == value for group in groups for name, value in shared.items())
        plain = not any(
            shared.get(flag) for flag in ("maximize", "amsgrad", "decoupled_weight_decay", "differentiable")
        )
        if not same or not plain or any(isinstance(group["lr"], Tensor) for group in groups):
            return None
        return cls(weights, [c.threshold for c in clippers], optimizer, {**shared, "groups": groups})

    def _member_view(self, values: Tensor, like: Tensor) -> Tensor:
        return values.view(self.members, *([1] * (like.dim() - 1)))

    def clip(self) -> list[ClipStats]:
        """``Clipper.__call__`` for every member: its global norm, a non-finite member's gradients
        zeroed, the rest rescaled to at most its threshold; one ``ClipStats`` per member."""
        grads = [w.grad for w in self.weights]
        per_weight = [torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]
        norm = torch.linalg.vector_norm(torch.stack(per_weight, dim=1), dim=1)
        finite = torch.isfinite(norm)
        safe = torch.nan_to_num(norm, nan=0.0, posinf=0.0)
        coef = torch.clamp(self.thresholds / (safe + NORM_EPS), max=1.0)
        coef = torch.where(finite, coef, 0.0)  # a non-finite member's step is zeroed, as Clipper does
        for g in grads:
            g.mul_(self._member_view(coef, g))
            g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # 0 * inf is NaN: zero means zero
        return [ClipStats(norm[k], self.thresholds[k], finite[k]) for k in range(self.members)]

    def step(self, active: Sequence[int]) -> None:
        """One optimizer step of every active member (the others' weights stay as they are)."""
        if tuple(active) != self._active:  # rebuilt only when a member stops: no host copy per step
            self._active = tuple(active)
            mask = torch.zeros(self.members, dtype=torch.float32)
            mask[list(active)] = 1.0
            self._rates = self.lrs * mask.to(self.lrs.device)
        self.steps += 1
        for weight, state in zip(self.weights, self.state):
            with torch.no_grad():
                grad = weight.grad
                if self.options["weight_decay"]:
                    grad = grad.add(weight, alpha=self.options["weight_decay"])
                if self.optimizer is torch.optim.Adam:
                    update = self._adam(grad, state)
                else:
                    update = self._sgd(grad, state)
                weight.sub_(self._member_view(self._rates, weight) * update)

    def _sgd(self, grad: Tensor, state: dict[str, Tensor]) -> Tensor:
        momentum, dampening = self.options["momentum"], self.options["dampening"]
        if not momentum:
            return grad
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = grad.detach().clone()
        else:
            state["momentum_buffer"].mul_(momentum).add_(grad, alpha=1 - dampening)
        buffer = state["momentum_buffer"]
        return grad.add(buffer, alpha=momentum) if self.options["nesterov"] else buffer

    def _adam(self, grad: Tensor, state: dict[str, Tensor]) -> Tensor:
        beta1, beta2 = self.options["betas"]
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.options["eps"])
        return exp_avg / denom / bias_correction1
