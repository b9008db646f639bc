"""Edit: the result of an erasure — only the parameters that changed, plus what produced them.

On disk an Edit is a folder with `edit.safetensors` (parameter name → new tensor, names prefixed by the
component, e.g. `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight`) and `edit.json`
(method, config, targets, preserved concepts, base model fingerprint, seconds taken, library versions, extras
such as the adversarial concepts AP chose or a loss curve). Inference-time methods (negative prompt, SLD) are
Edits with no tensors and a `generation` hook in the metadata.

Format version 2 adds `modules`: networks the edit inserts into the pipeline (Receler's erasers, SPM's
adapters), their specs in edit.json and their weights in edit.safetensors under `modules.<name>.<param>`; see
edit_modules.py. Version-1 folders (no modules) still load, with the same content hash.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_write_bytes, atomic_write_text
from .edit_modules import (
    AddedModule,
    ModuleSpec,
    attach_edit_modules,
    bake,
    check_unique,
    detach_edit_modules,
    module_tensors,
    split_module_tensors,
)
from .errors import EraseLabError
from .models import confirm_written_back, fingerprint
from .pipeline_state import known_state, state_of
from .provenance import library_versions, sha256_hex, stable_json

EDIT_TENSORS = "edit.safetensors"
EDIT_META = "edit.json"
FORMAT_VERSION = 2  # 2: added modules


@dataclass
class Edit:
    tensors: dict[str, torch.Tensor]
    method: str
    base_fingerprint: str
    config: dict = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    preserved: list[str] = field(default_factory=list)
    seconds: float = 0.0
    generation: dict = field(default_factory=dict)  # inference-time hook, e.g. {"negative_prompt": "circle"}
    extras: dict = field(default_factory=dict)  # chosen adversarial concepts, loss curve, …
    versions: dict = field(default_factory=library_versions)
    modules: list[AddedModule] = field(default_factory=list)  # networks inserted into the pipeline

    def __post_init__(self):
        check_unique(self.modules)

    # ---- identity ------------------------------------------------------------------------------------------
    def content_hash(self) -> str:
        """Identifies what the edit does to generation: tensors and the generation hook (not timings)."""
        parts = [stable_json({"generation": self.generation, "base": self.base_fingerprint})]
        for name in sorted(self.tensors):
            t = self.tensors[name].detach().cpu().contiguous()
            parts.append(f"{name}|{tuple(t.shape)}|{t.dtype}")
            parts.append(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        if self.modules:  # only then, so an edit without modules keeps its version-1 hash
            parts.append(stable_json([m.spec.as_dict() for m in self.modules]))
            for name, t in module_tensors(self.modules).items():
                parts.append(f"{name}|{tuple(t.shape)}|{t.dtype}")
                parts.append(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return sha256_hex(*parts)[:16]

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "config": self.config,
            "targets": self.targets,
            "preserved": self.preserved,
            "base_fingerprint": self.base_fingerprint,
            "seconds": self.seconds,
            "generation": self.generation,
            "extras": self.extras,
            "versions": self.versions,
            "parameters": sorted(self.tensors),
            "modules": [m.spec.as_dict() for m in self.modules],
            "edit_hash": self.content_hash(),
        }

    # ---- pipeline ------------------------------------------------------------------------------------------
    def check_base(self, pipe) -> None:
        fp = fingerprint(pipe)
        if fp != self.base_fingerprint:
            raise EraseLabError(
                f"this {self.method} edit was made for model {self.base_fingerprint}, but the loaded "
                f"model is {fp}; load the model the edit was made from"
            )

    def apply(self, pipe) -> None:
        """Write the edited parameters into `pipe` in place and hook in the added modules, keeping what
        `revert` needs to restore the pipeline exactly."""
        self.check_base(pipe)
        state = state_of(pipe)
        if state.applied_edit is not None:
            state.applied_edit.revert(pipe)
        params = named_parameters(pipe)
        missing = [n for n in self.tensors if n not in params]
        if missing:
            raise EraseLabError(
                f"edit changes parameter {missing[0]} which the model does not have; the edit "
                "belongs to another architecture, load the model it was made from"
            )
        for name, new in self.tensors.items():  # all checked before any is written
            if tuple(params[name].shape) != tuple(new.shape):
                raise EraseLabError(f"edit tensor {name} has shape {tuple(new.shape)} but the model's is "
                                    f"{tuple(params[name].shape)}; the edit belongs to another architecture, "
                                    "load the model it was made from")
        attach_edit_modules(pipe, self.modules)  # refuses before hooking anything
        # The originals go into the pipeline's state before the first write: from then on the fingerprint
        # takes them in place of the edited values, so it stays the base model's.
        state.applied_edit, state.edit_originals = self, {}
        with torch.no_grad():
            for name, new in self.tensors.items():
                p = params[name]
                state.edit_originals[name] = p.detach().clone()
                p.copy_(new.to(device=p.device, dtype=p.dtype))

    def revert(self, pipe) -> None:
        """Restore the parameters `apply` overwrote and remove the modules it hooked in."""
        state = state_of(pipe)
        if state.applied_edit is not self:
            return
        fingerprint(pipe)  # confirmed (or computed) while the originals are known, so the write-back keeps it
        detach_edit_modules(pipe, state.attached_modules)
        params = named_parameters(pipe)
        with torch.no_grad():
            for name, old in state.edit_originals.items():
                params[name].copy_(old)
        confirm_written_back(pipe, state.edit_originals)
        state.applied_edit, state.edit_originals = None, {}

    # ---- disk ----------------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save

        out = Path(out_dir)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        tensors.update(module_tensors(self.modules))
        # Tensors first, metadata last: a folder with edit.json is complete (load checks the hash).
        atomic_write_bytes(out / EDIT_TENSORS, save(tensors) if tensors else save({}))
        atomic_write_text(out / EDIT_META, json.dumps(self.metadata(), indent=1, default=str))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "Edit":
        from safetensors.torch import load

        folder = Path(folder)
        meta_path, tensor_path = folder / EDIT_META, folder / EDIT_TENSORS
        if not meta_path.exists() or not tensor_path.exists():
            raise EraseLabError(
                f"{folder} is not an edit folder (needs {EDIT_META} and {EDIT_TENSORS}); pass the "
                "--out folder of `eraselab erase`"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EraseLabError(
                f"{meta_path} is not valid JSON; re-run `eraselab erase` to rebuild it"
            ) from exc
        if not isinstance(meta, dict):
            raise EraseLabError(
                f"{meta_path} is not an edit description (a JSON object); re-run `eraselab erase` to "
                "rebuild it"
            )
        check_metadata(meta, meta_path)
        try:
            tensors = load(tensor_path.read_bytes())
        except Exception as exc:  # safetensors raises its own error type for truncated/garbled files
            raise EraseLabError(f"{tensor_path} is corrupted ({str(exc).splitlines()[0]}); re-run `eraselab "
                                "erase` to rebuild it") from exc
        for name, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise EraseLabError(
                    f"{tensor_path} holds non-finite values in {name}; re-run `eraselab erase`"
                )
        specs = [ModuleSpec.from_dict(d, str(meta_path)) for d in meta.get("modules") or []]
        modules = split_module_tensors(specs, tensors, str(tensor_path))
        try:
            edit = cls(tensors=tensors, modules=modules, method=meta["method"],
                       base_fingerprint=meta["base_fingerprint"],
                       config=meta.get("config") or {}, targets=meta.get("targets") or [],
                       preserved=meta.get("preserved") or [], seconds=float(meta.get("seconds") or 0.0),
                       generation=meta.get("generation") or {}, extras=meta.get("extras") or {},
                       versions=meta.get("versions") or {})
        except (KeyError, TypeError, ValueError) as exc:
            what = (
                f"lacks field {exc}"
                if isinstance(exc, KeyError)
                else f"has a field of the wrong type ({exc})"
            )
            raise EraseLabError(f"{meta_path} {what}; re-run `eraselab erase` to rebuild it") from exc
        recorded = meta.get("edit_hash")
        if recorded is not None and recorded != edit.content_hash():
            raise EraseLabError(f"{tensor_path} does not match the hash recorded in {EDIT_META} (tampered or "
                                "partly written); re-run `eraselab erase` to rebuild it")
        return edit

    def export_pipeline(self, pipe, out_dir: str | Path) -> Path:
        """Write the edited model as a full diffusers folder (loadable without eraselab).

        Added modules are folded into their targets' weights where their kind can be (a linear branch);
        an edit with any other module (Receler's nonlinear erasers) is refused in one line: use the saved
        edit through eraselab instead."""
        self.apply(pipe)
        baked = {}
        try:
            baked = bake(pipe, self.modules, self.method)
            pipe.save_pretrained(str(out_dir), safe_serialization=True)
            atomic_write_text(Path(out_dir) / "eraselab_edit.json", json.dumps(self.metadata(), indent=1,
                                                                               default=str))
        finally:
            params = named_parameters(pipe)
            with torch.no_grad():
                for name, old in baked.items():
                    params[name].copy_(old)
            confirm_written_back(pipe, baked)
            self.revert(pipe)
        return Path(out_dir)


# Each field of edit.json and the JSON type it must have (bool excluded from numbers).
_FIELD_TYPES = {
    "format_version": int,
    "method": str,
    "base_fingerprint": str,
    "config": dict,
    "targets": list,
    "preserved": list,
    "seconds": (int, float),
    "generation": dict,
    "extras": dict,
    "versions": dict,
    "modules": list,
    "edit_hash": str,
}
_REQUIRED = ("format_version", "method", "base_fingerprint")


def check_metadata(meta: dict, meta_path: Path) -> None:
    """Refuse an edit.json of another format version or with a missing or wrong-typed field (one line)."""
    for key in _REQUIRED:
        if key not in meta:
            raise EraseLabError(f"{meta_path} lacks field {key!r}; re-run `eraselab erase` to rebuild it")
    version = meta["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise EraseLabError(
            f"{meta_path} has edit format version {version!r}, but this eraselab reads version "
            f"{FORMAT_VERSION}; use the eraselab that wrote it or re-run `eraselab erase`"
        )
    for key, kind in _FIELD_TYPES.items():
        value = meta.get(key)
        if value is None and key not in _REQUIRED:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise EraseLabError(
                f"{meta_path} field {key!r} must be {names}, not {type(value).__name__}; re-run "
                "`eraselab erase` to rebuild it"
            )
    for key in ("targets", "preserved"):
        if not all(isinstance(c, str) for c in meta.get(key) or []):
            raise EraseLabError(
                f"{meta_path} field {key!r} must list strings; re-run `eraselab erase` to rebuild it"
            )


def named_parameters(pipe) -> dict[str, torch.nn.Parameter]:
    """Parameters an Edit may change, under the names Edits use (component-prefixed)."""
    from .models import fingerprinted_modules

    out = {}
    for comp, module in fingerprinted_modules(pipe).items():
        for name, p in module.named_parameters():
            out[f"{comp}.{name}"] = p
    return out


class Snapshot(dict):
    """Parameter name → copy, taken by `snapshot` before a method changes them in place, with the base model's
    fingerprint at that moment."""

    fingerprint: str


def edit_from_changes(pipe, before: dict[str, torch.Tensor], method: str, **meta) -> Edit:
    """Build an Edit from the parameters that differ from `before` (a snapshot taken by `snapshot`); the
    method then writes `before` back (the next fingerprint checks that it did)."""
    params = named_parameters(pipe)
    changed = {n: params[n].detach().cpu().clone() for n, old in before.items()
               if not torch.equal(params[n].detach().cpu(), old)}
    for n, t in changed.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise EraseLabError(
                f"the {method} edit produced non-finite values in {n}; lower the learning rate or "
                "the erase scale"
            )
    base = before.fingerprint if isinstance(before, Snapshot) else fingerprint(pipe)
    edit = Edit(tensors=changed, method=method, base_fingerprint=base, **meta)
    if isinstance(before, Snapshot):
        state_of(pipe).awaiting_write_back = before
    return edit


def snapshot(pipe, names=None) -> Snapshot:
    """Copies of the parameters (all, or `names`) before a method changes them in place.

    Also fixes the base fingerprint now, while the weights are still the original ones: the method's writes
    change the weights' fingerprint, not the base its Edit is made for."""
    base = fingerprint(pipe)
    params = named_parameters(pipe)
    copies = Snapshot({n: params[n].detach().cpu().clone() for n in (names if names is not None else params)})
    copies.fingerprint = base
    return copies


def applied_edit(pipe):
    state = known_state(pipe)
    return state.applied_edit if state is not None else None


