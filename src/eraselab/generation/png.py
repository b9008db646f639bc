"""PNG files: the bytes stored for an image (who made it in a text chunk), and images back from the store."""
from __future__ import annotations

import io
from collections.abc import Sequence

from ..probes import Probe
from ..provenance import stable_json
from ..store import RunStore


def png_bytes(image, key: str, probe: Probe, model: str, edit_hash: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    # Who made the file travels with it (deterministic text, so equal pixels still give equal bytes).
    info.add_text("eraselab", stable_json({"key": key, "probe": probe.generation_fields(), "model": model,
                                           "edit": edit_hash}))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def images_for(store: RunStore, keys: Sequence[str]) -> list:
    """PIL images for image keys, in order (raises a one-line error for a key not in the store)."""
    from PIL import Image

    out = []
    for key in keys:
        img = Image.open(io.BytesIO(store.load_png(key)))
        img.load()
        out.append(img)
    return out
