"""What eraselab knows about a loaded pipeline, kept beside it rather than on diffusers' object.

One `PipelineState` per pipeline object: where the model came from, its cached model and VAE fingerprints, the
Edit applied to it with the base values that `revert` puts back, the modules that Edit hooked in, and the
snapshot of a method that is writing its originals back. The registry holds the pipeline by a weak reference,
so a state lives exactly as long as its pipeline (nothing in a state refers back to it), and keys by identity
rather than by `==` as a WeakKeyDictionary would: two equal-comparing pipelines never share a state, and a
pipeline class need not be hashable.

A cached hash is reused only while the tensors it covers are the same tensors with the same contents as far
as torch can tell: each tensor's in-place version counter (bumped by `add_`, `copy_`, optimizer steps,
`load_state_dict`) and its storage address (changed by `module.to`, `param.data = …`). Writes through
`param.data` bypass the version counter and stay invisible, as they do to autograd.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from .errors import EraseLabError

Signature = dict[str, tuple]


def signature(tensors: dict[str, torch.Tensor]) -> Signature:
    """name → (in-place version, storage address): a change means the tensor may hold other values."""
    return {n: (_version(t), t.data_ptr()) for n, t in tensors.items()}


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # an inference-mode tensor keeps no counter: never trust a cache built on it
        return object()


@dataclass(eq=False)
class CachedHash:
    """A hash of named tensors, and the signature those tensors had when it was last confirmed."""

    value: str | None = None
    signature: Signature = field(default_factory=dict)

    def get(self, tensors: dict[str, torch.Tensor], compute: Callable[[], str],
            known: Collection[str] = ()) -> str:
        """The cached hash while the tensors are unchanged, else `compute()` (cached with the new signature).
        `known`: tensors whose changes do not matter, because the hash uses their base values instead."""
        now = signature(tensors)
        if self.value is None or now.keys() != self.signature.keys() or any(
                now[n] != self.signature[n] for n in now if n not in known):
            self.value, self.signature = compute(), now
        return self.value

    def confirm(self, tensors: dict[str, torch.Tensor], names: Collection[str]) -> None:
        """These tensors were written back with exactly the values the cached hash covers."""
        now = signature({n: tensors[n] for n in names if n in tensors and n in self.signature})
        self.signature.update(now)


@dataclass(eq=False)
class PipelineState:
    source: str = "in-memory"  # what load_pipeline was given, or the tiny builder's description
    model: CachedHash = field(default_factory=CachedHash)  # models.fingerprint: denoiser and text encoders
    vae: CachedHash = field(default_factory=CachedHash)  # part of the image keys' numerics
    applied_edit: object | None = None  # the eraselab.edits.Edit whose values are in the weights now
    edit_originals: dict[str, torch.Tensor] = field(default_factory=dict)  # what applied_edit overwrote
    attached_modules: object | None = None  # the edit_modules.Attachment of applied_edit's added modules
    # The edits.Snapshot of a method that has made its Edit and is now writing its originals back: the next
    # fingerprint checks them once, so that an erase leaves the cached fingerprint valid.
    awaiting_write_back: dict | None = None


_STATES: dict[int, tuple[weakref.ref, PipelineState]] = {}


def known_state(pipe) -> PipelineState | None:
    """The state eraselab keeps for `pipe`, or None if it has none yet (readers need not create one)."""
    entry = _STATES.get(id(pipe))
    return entry[1] if entry is not None and entry[0]() is pipe else None


def state_of(pipe) -> PipelineState:
    """The state eraselab keeps for `pipe` (created empty on first use, dropped when `pipe` is collected)."""
    known = known_state(pipe)
    if known is not None:
        return known
    key = id(pipe)
    try:
        ref = weakref.ref(pipe, lambda dead, key=key: _forget(key, dead))
    except TypeError:
        raise EraseLabError(
            f"eraselab keeps its bookkeeping beside the pipeline under a weak reference, which a "
            f"{type(pipe).__name__} object does not allow; pass a diffusers pipeline (or an object "
            "whose class allows weak references)"
        ) from None
    state = PipelineState()
    _STATES[key] = (ref, state)
    return state


def _forget(key: int, dead: weakref.ref) -> None:
    if key in _STATES and _STATES[key][0] is dead:
        del _STATES[key]
