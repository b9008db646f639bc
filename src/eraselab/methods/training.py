"""Shared machinery of the fine-tuning methods (ESD, AP, AGE, CA): the trained parameter group with its Adam,
the frozen original model θ*, seeded sampling, the progress bar, the loss log, and putting the caller's
weights back afterwards."""
from __future__ import annotations

import copy
import itertools
import math
import time
from contextlib import contextmanager

import torch

from .. import edits
from ..errors import EraseLabError
from ..threads import rebalance_threads
from .diffusion import unet_out
from .params import parameter_group, unet_prefixed

CURVE_POINTS = 200


def check_trainable(pipe, module: torch.nn.Module, what: str) -> None:
    """Refuse, before any work, a fine-tuning start that could not give a valid Edit: half-precision weights
    (`what` names the module in the message), or an edit already applied to the pipeline."""
    if module.dtype != torch.float32:
        raise EraseLabError(f"fine-tuning needs float32 weights but {what} is {module.dtype}; load the model "
                            "without a half-precision dtype")
    if edits.applied_edit(pipe) is not None:
        raise EraseLabError("the pipeline already has an edit applied; revert it (edit.revert(pipe)) before "
                            "erasing, so the new edit is relative to the base model")


def copy_in(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `module` with its floating-point parameters and buffers in `dtype`, made without a
    full-precision intermediate (deepcopy then .to() would hold a second float32 model for a moment)."""
    memo = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            c = t.detach().to(dtype, copy=True)
            memo[id(t)] = torch.nn.Parameter(c, t.requires_grad) if isinstance(t, torch.nn.Parameter) else c
    return copy.deepcopy(module, memo)


class TrainingSession:
    """Trains a parameter group of `pipe.unet` (or of another denoiser component) in place; `finish()` returns
    the Edit and restores the pipe.

    The frozen model θ* is the same UNet called with the original values of the trained parameters
    (torch.func.functional_call), so it costs the memory of the trained group, not a second UNet.

    With a `dtype` other than the model's (bfloat16, as the diffusers ESD scripts train), the session trains a
    private copy of the denoiser in that dtype (the model's own weights would lose their precision in a round
    trip); `finish()` writes the trained values back in the model's dtype for the Edit, then restores them.
    """

    def __init__(self, pipe, group: str, lr: float, seed: int, weight_decay: float | None = None,
                 max_grad_norm: float = 0.0, component: str = "unet", names: list[str] | None = None,
                 dtype: torch.dtype = torch.float32):
        """Adam at `lr` on `group`; with `weight_decay` (not None) AdamW (betas 0.9/0.999, eps 1e-8) as the
        diffusers training scripts use; `max_grad_norm` > 0 clips the trained parameters' gradient norm.
        `component` and `names`: another denoiser (Flux's "transformer") and its parameters to train, which
        the UNet parameter groups cannot name; `self.unet` is then that denoiser."""
        unet = getattr(pipe, component)
        check_trainable(pipe, unet, "the UNet" if component == "unet" else f"the {component}")
        self.pipe, self.unet, self.group = pipe, unet, group
        self.names = parameter_group(unet, group) if names is None else list(names)
        self.started = time.perf_counter()
        self.edit_names = unet_prefixed(self.names) if component == "unet" else [f"{component}.{n}"
                                                                                 for n in self.names]
        self.before = edits.snapshot(pipe, self.edit_names)
        self.model_params = None  # the model's own parameters while a private copy trains
        if dtype != unet.dtype:
            self.model_params = dict(unet.named_parameters())
            unet = self.unet = copy_in(unet, dtype)
        self.dtype = dtype
        params = dict(unet.named_parameters())
        self.originals = {n: params[n].detach().clone() for n in self.names}
        self._grad_flags = {n: p.requires_grad for n, p in params.items()}
        unet.requires_grad_(False)
        self.trained = [params[n] for n in self.names]
        for p in self.trained:
            p.requires_grad_(True)
        if weight_decay is None:
            self.optimizer = torch.optim.Adam(self.trained, lr=lr)
        else:
            self.optimizer = torch.optim.AdamW(self.trained, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                               weight_decay=weight_decay)
        self.max_grad_norm = max_grad_norm
        self.generator = torch.Generator().manual_seed(seed)
        self.device = unet.device
        self.losses: list[float] = []

    # ---- models --------------------------------------------------------------------------------------------
    def trained_out(self, x, t, cond, added: dict | None = None):
        """θ's prediction; `added`: SDXL's added conditions (added_cond_kwargs)."""
        return unet_out(self.unet, x, t, cond, added)

    def frozen_out(self, x, t, cond, added: dict | None = None):
        """θ*'s prediction; differentiable in the inputs (AP's concept search needs that), not in θ."""
        extra = {} if added is None else {"added_cond_kwargs": added}
        return torch.func.functional_call(self.unet, self.originals, (x, self._t(x, t)),
                                          {"encoder_hidden_states": self._c(x, cond), **extra}).sample

    @staticmethod
    def _t(x, t):
        tt = torch.as_tensor(t, device=x.device)
        return tt.expand(x.shape[0]) if tt.dim() == 0 else tt

    @staticmethod
    def _c(x, cond):
        cond = cond.unsqueeze(0) if cond.dim() == 2 else cond
        return (
            cond.expand(x.shape[0], -1, -1).to(x.dtype) if cond.shape[0] != x.shape[0] else cond.to(x.dtype)
        )

    def randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device, self.dtype)

    def choice(self, items):
        return items[int(torch.randint(len(items), (1,), generator=self.generator))]

    # ---- optimisation --------------------------------------------------------------------------------------
    def step(self, loss: torch.Tensor) -> float:
        rebalance_threads()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trained, self.max_grad_norm)
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise EraseLabError("the training loss became non-finite; lower the learning rate")
        self.losses.append(value)
        return value

    def finish(self, method: str, config: dict, targets, preserved, extras: dict | None = None) -> edits.Edit:
        """The Edit of the trained parameters; the pipeline gets its original weights back."""
        try:
            extras = {**(extras or {}), **loss_summary(self.losses)}
            if self.model_params is not None:
                with torch.no_grad():
                    for n, p in zip(self.names, self.trained):
                        self.model_params[n].copy_(p.to(self.model_params[n].dtype))
            return edits.edit_from_changes(
                self.pipe,
                self.before,
                method,
                config=config,
                targets=list(targets),
                preserved=list(preserved),
                seconds=self.seconds(),
                extras=extras,
            )
        finally:
            self.restore()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    def restore(self) -> None:
        if self.model_params is not None:
            with torch.no_grad():
                for n, key in zip(self.names, self.edit_names):
                    self.model_params[n].copy_(self.before[key])
        params = dict(self.unet.named_parameters())
        with torch.no_grad():
            for n, old in self.originals.items():
                params[n].copy_(old)
        for n, p in params.items():
            p.requires_grad_(self._grad_flags[n])
            p.grad = None


def loss_summary(losses: list[float]) -> dict:
    """The loss curve (bucket means, at most CURVE_POINTS points) and the mean loss of the first/last
    tenth."""
    if not losses:
        return {}
    n = len(losses)
    size = max(1, -(-n // CURVE_POINTS))
    curve = [sum(losses[i:i + size]) / len(losses[i:i + size]) for i in range(0, n, size)]
    tenth = max(1, n // 10)
    return {"loss_curve": [round(v, 6) for v in curve], "loss_curve_bucket": size,
            "loss_first": sum(losses[:tenth]) / tenth, "loss_last": sum(losses[-tenth:]) / tenth}


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True):
    """Yields `advance(loss)`; a rich progress bar when enabled, nothing otherwise."""
    if not enabled:
        yield lambda loss=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[loss]}"), transient=False) as bar:
        task = bar.add_task(description, total=total, loss="")

        def advance(loss=None):
            bar.update(task, advance=1, loss=f"loss {loss:.4g}" if loss is not None else "")

        yield advance
