"""Cached edits are reused only for the same request made by the same method code."""
import eraselab
from eraselab import edit_cache
from eraselab.models import fingerprint, tiny_random_pipeline


def _request(pipe):
    return edit_cache.request_record("negprompt", ["cat"], [], {"seed": 0}, fingerprint(pipe))


def test_cached_edit_is_reused_for_the_same_request_and_code(tmp_path):
    pipe = tiny_random_pipeline(0)
    edit = eraselab.erase(pipe, "negprompt", ["cat"], progress=False)
    edit_cache.save_cached_edit(tmp_path, edit, _request(pipe))
    again = edit_cache.load_cached_edit(tmp_path, _request(pipe))
    assert again is not None and again.generation == edit.generation


def test_cached_edit_from_other_method_code_is_made_again(tmp_path, monkeypatch):
    pipe = tiny_random_pipeline(0)
    edit = eraselab.erase(pipe, "negprompt", ["cat"], progress=False)
    edit_cache.save_cached_edit(tmp_path, edit, _request(pipe))
    # Same request, but the methods' source changed since (a new eraselab or a local patch).
    monkeypatch.setattr(edit_cache, "methods_code_hash", lambda: "0" * 16)
    assert edit_cache.load_cached_edit(tmp_path, _request(pipe)) is None


def test_methods_code_hash_follows_the_source(tmp_path, monkeypatch):
    first = edit_cache.methods_code_hash()
    assert len(first) == 16 and first == edit_cache.methods_code_hash()
    fake = tmp_path / "eraselab"
    (fake / "methods").mkdir(parents=True)
    (fake / "methods" / "uce.py").write_text("x = 1\n")
    (fake / "edits.py").write_text("")
    monkeypatch.setattr(edit_cache, "__file__", str(fake / "edit_cache.py"))
    edit_cache.methods_code_hash.cache_clear()
    try:
        one = edit_cache.methods_code_hash()
        (fake / "methods" / "uce.py").write_text("x = 2\n")
        edit_cache.methods_code_hash.cache_clear()
        assert edit_cache.methods_code_hash() != one
    finally:
        edit_cache.methods_code_hash.cache_clear()
