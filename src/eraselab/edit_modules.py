"""Modules an Edit adds to a pipeline (erasers, adapters): kinds, specs, storage, attaching and detaching.

Some methods cannot be written as new parameter values: Receler puts a small eraser network after every
cross-attention, SPM a one-dimensional adapter beside every linear layer of the transformer blocks. An Edit
carries such networks as `AddedModule`s: a JSON spec (name, kind, where it attaches, how it hooks in, the
constructor's arguments) plus the module's weights. On disk the spec goes into edit.json ("modules") and the
weights into the same edit.safetensors as the parameter deltas, under `modules.<name>.<param>`; nothing is
pickled, and a kind must be registered here, so loading an edit never runs code the edit names.

Attaching uses forward hooks on the target module, so the pipeline's own modules, parameter names and
state_dict (hence its fingerprint) stay untouched, and removing the hooks restores it exactly. Hook kinds:
  - "add_to_output": y = target(x) + module(target(x))   (Receler's eraser after cross-attention)
  - "add_beside":    y = target(x) + module(x)           (a LoRA-style branch beside a Linear or Conv2d: SPM)

How a method adds a module:
  1. Write the network as a torch.nn.Module in the method's file; its constructor takes only JSON-able
     keyword arguments (sizes, ranks, flags), e.g. `AdapterEraser(dim=320, rank=128)`.
  2. Register its kind once, below: `MODULE_KINDS.add("my_kind", "eraselab.methods.my_method:MyModule")`
     (one line; third-party packages use the entry-point group "eraselab.edit_modules").
  3. Train: `spec = ModuleSpec(name, "my_kind", "unet.<dotted path>", "add_beside", {...})`,
     `module = spec.build()`, `attachment = attach(pipe, [(spec, module)])`, optimise `module.parameters()`
     (inside `with attachment.disabled():` the pipeline is the frozen base model), then `attachment.remove()`.
     methods/receler.py is a worked example.
  4. Return `Edit(tensors={}, modules=[AddedModule(spec, module.state_dict())], ...)`; `apply`/`revert`,
     save/load, the content hash and export then handle it.
  A value set at inference (SPM's per-prompt scale) is an attribute of the module instance: while an edit is
  applied, `attached_modules(pipe)` gives name → instance. `export_pipeline` bakes a module into the target's
  weights only if its class defines `merged_weights(target) -> {param name: new tensor}` (exact for a linear
  branch at a fixed scale); otherwise it refuses, and the edit must be used through eraselab.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .errors import EraseLabError
from .pipeline_state import known_state, state_of
from .registry import Registry

MODULE_PREFIX = "modules."
HOOKS = ("add_to_output", "add_beside")

MODULE_KINDS: Registry[type[torch.nn.Module]] = Registry(
    "edit module kind", base=torch.nn.Module, entry_points="eraselab.edit_modules",
    hint="the edit needs a newer eraselab or the package that defines that kind")
MODULE_KINDS.add("receler_eraser", "eraselab.methods.receler:AdapterEraser")
MODULE_KINDS.add("spm_adapter", "eraselab.methods.spm:SPMAdapter")


def generation_hooks(modules: Sequence[AddedModule]) -> list:
    """The generation hooks the edit's module kinds run with (one per kind whose class names one in
    `generation_hook`, e.g. SPM's facilitated transport): generation applies them whenever it applies the
    edit, so the edit's images always come from the same computation (its content hash names both)."""
    hooks = []
    for kind in dict.fromkeys(m.spec.kind for m in modules):
        make = getattr(MODULE_KINDS.get(kind), "generation_hook", None)
        if make is not None:
            hooks.append(make())
    return hooks


@dataclass(frozen=True)
class ModuleSpec:
    """What an added module is and where it goes; everything here is JSON."""

    name: str  # unique within the edit
    kind: str  # a MODULE_KINDS name
    attach_to: str  # component-prefixed dotted path of the target module, e.g. "unet.mid_block.….attn2"
    hook: str  # one of HOOKS
    config: dict = field(default_factory=dict)  # the kind's constructor arguments

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "attach_to": self.attach_to, "hook": self.hook,
                "config": self.config}

    def check(self, where: str = "edit") -> None:
        """One-line refusal of a malformed spec or an unknown kind (before anything is built)."""
        for key in ("name", "kind", "attach_to", "hook"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise EraseLabError(f"{where}: an added module's {key!r} must be a non-empty string, got "
                                    f"{value!r}; re-run `eraselab erase` to rebuild the edit")
        if self.kind not in MODULE_KINDS:
            raise EraseLabError(
                f"{where}: added module {self.name!r} has kind {self.kind!r}, which this "
                f"eraselab does not know (known: {', '.join(MODULE_KINDS.names())}); use the eraselab "
                "that wrote the edit"
            )
        if self.hook not in HOOKS:
            raise EraseLabError(f"{where}: added module {self.name!r} has hook {self.hook!r}; use one of "
                                f"{', '.join(HOOKS)}")
        if not isinstance(self.config, dict):
            raise EraseLabError(f"{where}: added module {self.name!r} needs a config object, got "
                                f"{type(self.config).__name__}; re-run `eraselab erase` to rebuild the edit")
        try:
            json.dumps(self.config)
        except (TypeError, ValueError) as exc:
            raise EraseLabError(f"{where}: added module {self.name!r} has a config that is not JSON ({exc}); "
                                "give the module kind plain constructor arguments") from exc

    def build(self) -> torch.nn.Module:
        """A fresh instance of the module (its constructor's initial weights)."""
        self.check()
        cls = MODULE_KINDS.get(self.kind)
        try:
            return cls(**self.config)
        except TypeError as exc:
            raise EraseLabError(f"added module {self.name!r} ({self.kind}) cannot be built from config "
                                f"{self.config} ({exc}); re-run `eraselab erase` to rebuild the edit"
                                ) from exc

    @classmethod
    def from_dict(cls, d, where: str = "edit") -> "ModuleSpec":
        if not isinstance(d, dict):
            raise EraseLabError(f"{where}: each added module must be a JSON object, got {type(d).__name__}; "
                                "re-run `eraselab erase` to rebuild the edit")
        spec = cls(d.get("name"), d.get("kind"), d.get("attach_to"), d.get("hook"), d.get("config", {}))
        spec.check(where)
        return spec


@dataclass
class AddedModule:
    """A module spec with its trained weights (CPU tensors, named as in the module's state_dict)."""

    spec: ModuleSpec
    state: dict[str, torch.Tensor]

    def instantiate(self) -> torch.nn.Module:
        module = self.spec.build()
        try:
            module.load_state_dict(self.state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[-1].strip() or str(exc).splitlines()[0]
            raise EraseLabError(f"the weights of added module {self.spec.name!r} do not fit its config "
                                f"({first}); re-run `eraselab erase` to rebuild the edit") from exc
        return module.eval()


def check_unique(modules: Sequence[AddedModule]) -> None:
    names = [m.spec.name for m in modules]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise EraseLabError(f"two added modules share the name {dup!r}; give each module its own name")


def module_tensors(modules: Iterable[AddedModule]) -> dict[str, torch.Tensor]:
    """Every module's weights under `modules.<name>.<param>`, as they are stored in edit.safetensors."""
    out = {}
    for m in modules:
        for param, t in m.state.items():
            out[f"{MODULE_PREFIX}{m.spec.name}.{param}"] = t.detach().cpu().contiguous()
    return out


def split_module_tensors(specs: Sequence[ModuleSpec], tensors: dict[str, torch.Tensor],
                         where: str) -> list[AddedModule]:
    """Take each spec's weights out of `tensors` (in place) by the parameter names its kind declares."""
    modules = []
    for spec in specs:
        expected = list(spec.build().state_dict())
        prefix = f"{MODULE_PREFIX}{spec.name}."
        missing = [p for p in expected if prefix + p not in tensors]
        if missing:
            raise EraseLabError(f"{where} lacks weight {prefix + missing[0]} of added module {spec.name!r}; "
                                "re-run `eraselab erase` to rebuild the edit")
        modules.append(AddedModule(spec, {p: tensors.pop(prefix + p) for p in expected}))
    stray = next((k for k in tensors if k.startswith(MODULE_PREFIX)), None)
    if stray is not None:
        raise EraseLabError(f"{where} holds {stray}, which no added module in edit.json claims; re-run "
                            "`eraselab erase` to rebuild the edit")
    return modules


def target_module(pipe, path: str) -> torch.nn.Module:
    """The module at a component-prefixed dotted path ("unet.down_blocks.0.….attn2")."""
    component, _, rest = path.partition(".")
    root = getattr(pipe, component, None)
    if not isinstance(root, torch.nn.Module):
        raise EraseLabError(f"an added module attaches to {path}, but the pipeline has no component "
                            f"{component!r}; load the model the edit was made from")
    try:
        return root.get_submodule(rest) if rest else root
    except AttributeError:
        raise EraseLabError(f"an added module attaches to {path}, which the model does not have; the edit "
                            "belongs to another architecture, load the model it was made from") from None


def _output_hook(attachment: "Attachment", module: torch.nn.Module, hook: str):
    def follow(target, args, kwargs, out):
        if not attachment.enabled:
            return out
        first = out[0] if isinstance(out, tuple) else out
        if hook == "add_to_output":
            added = first + module(first)
        else:
            x = args[0] if args else kwargs["hidden_states"]
            added = first + module(x)
        return (added, *out[1:]) if isinstance(out, tuple) else added

    return follow


class Attachment:
    """Hooks that run added modules inside a pipeline; `remove()` takes them all out again, and within
    `with attachment.disabled():` the pipeline computes as if they were absent (a method's frozen model)."""

    def __init__(self, pipe, pairs: Sequence[tuple[ModuleSpec, torch.nn.Module]]):
        self.enabled = True  # no reference to `pipe`: the pipeline's state holds an Attachment
        self.modules = {spec.name: module for spec, module in pairs}
        targets = [(spec, module, target_module(pipe, spec.attach_to)) for spec, module in pairs]
        self._handles = []
        for spec, module, target in targets:
            p = next(target.parameters(), None)
            if p is not None:
                module.to(device=p.device, dtype=p.dtype)
            hook = _output_hook(self, module, spec.hook)
            self._handles.append(target.register_forward_hook(hook, with_kwargs=True))

    @contextmanager
    def disabled(self):
        before, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = before

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def attach(pipe, pairs: Sequence[tuple[ModuleSpec, torch.nn.Module]]) -> Attachment:
    """Hook each (spec, module instance) into `pipe`; used by methods while they train their modules."""
    for spec, _ in pairs:
        spec.check()
    return Attachment(pipe, pairs)


def attach_edit_modules(pipe, modules: Sequence[AddedModule]) -> Attachment | None:
    """Build an Edit's modules from their stored weights and hook them in (None if it has none)."""
    if not modules:
        return None
    attachment = attach(pipe, [(m.spec, m.instantiate()) for m in modules])
    state_of(pipe).attached_modules = attachment
    return attachment


def detach_edit_modules(pipe, attachment: Attachment | None) -> None:
    if attachment is not None:
        attachment.remove()
        state = known_state(pipe)
        if state is not None and state.attached_modules is attachment:
            state.attached_modules = None


def attached_modules(pipe) -> dict[str, torch.nn.Module]:
    """name → instance of the modules of the Edit applied to `pipe` (e.g. to set an inference-time scale)."""
    state = known_state(pipe)
    attachment = state.attached_modules if state is not None else None
    return dict(attachment.modules) if attachment is not None else {}


def bake(pipe, modules: Sequence[AddedModule], method: str) -> dict[str, torch.Tensor]:
    """Fold every module into its target's weights in place; returns the overwritten originals (name → copy).

    Only kinds whose class defines `merged_weights(target)` fold; anything else is refused in one line before
    a weight changes (a nonlinear eraser has no weight-space equivalent)."""
    for m in modules:
        if not hasattr(MODULE_KINDS.get(m.spec.kind), "merged_weights"):
            raise EraseLabError(
                f"this {method} edit adds {m.spec.kind} modules, which a plain diffusers "
                "folder cannot hold; save the edit (`eraselab erase --out`) and use it through "
                "eraselab (Edit.load(folder).apply(pipe)) instead of exporting"
            )
    originals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for m in modules:
            target = target_module(pipe, m.spec.attach_to)
            params = dict(target.named_parameters())
            for param, value in m.instantiate().merged_weights(target).items():
                originals.setdefault(f"{m.spec.attach_to}.{param}", params[param].detach().clone())
                params[param].copy_(value.to(params[param].dtype))
    return originals
