import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a failed hub look-up costs ~30 s each
if "ERASELAB_CACHE" not in os.environ:  # the tests' encoding caches stay out of the user's ~/.cache
    import tempfile

    os.environ["ERASELAB_CACHE"] = tempfile.mkdtemp(prefix="eraselab-test-cache-")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread for the whole test run: on a 2-core machine shared with other processes (CI jobs,
    subprocesses the tests start), OpenMP threads spinning against each other slow a tiny UNet call from
    ~0.05 s to seconds. Subprocess tests set OMP_NUM_THREADS=1 for the same reason."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipe_factory():
    """Build tiny random pipelines once per seed per session (they take a few seconds each)."""
    from eraselab.models import tiny_random_pipeline

    cache = {}

    def make(seed: int = 0, sd1_shapes: bool = False):
        key = (seed, sd1_shapes)
        if key not in cache:
            cache[key] = tiny_random_pipeline(seed, sd1_shapes=sd1_shapes)
        return cache[key]

    return make


@pytest.fixture
def tiny_pipe():
    """A fresh tiny pipeline a test may modify."""
    from eraselab.models import tiny_random_pipeline

    return tiny_random_pipeline(0)


def tiny_clip_model():
    """A tiny random CLIPModel with its image processor and the real CLIP BPE tokenizer (no downloads)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from eraselab.models import clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 49406,
                     "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPModel(config).eval(), processor, clip_tokenizer()


def save_clip_folder(folder, model, processor, tokenizer):
    """Write a CLIP folder as `save_pretrained` users have it (what `--evaluator clip:FOLDER` reads)."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pytest_collection_modifyitems(config, items):
    """The longest test file (the demo, minutes) first: under pytest-xdist (--dist loadfile) it then runs
    beside the others instead of after them."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_demo.py") else 1)
