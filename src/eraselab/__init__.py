"""eraselab: concept erasure for text-to-image diffusion models, and honest measurement of its side
effects."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy re-exports keep `import eraselab` (and the CLI's start-up) fast: torch/diffusers load on first use.
    if name == "erase":
        from .methods import erase

        return erase
    if name in ("load_pipeline", "tiny_random_pipeline", "fingerprint"):
        from . import models

        return getattr(models, name)
    if name == "Edit":
        from .edits import Edit

        return Edit
    if name == "Probe":
        from .probes import Probe

        return Probe
    raise AttributeError(name)
