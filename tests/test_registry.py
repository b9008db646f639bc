"""The one registry type (eraselab/registry.py) and the four registries built on it: methods, suites,
evaluators and guidance hooks."""
import json
import subprocess
import sys
import textwrap
import types
from importlib.metadata import EntryPoint

import pytest
from test_bench_report import _spec, tiny_model_dir  # noqa: F401  (a fixture, and the stand-in evaluator)

from eraselab.errors import EraseLabError
from eraselab.registry import Registry


class Base:
    pass


class Alpha(Base):
    pass


class Beta(Base):
    pass


def _module(tmp_path, monkeypatch, name: str, source: str, registry=None) -> str:
    """Write an importable module `name` into tmp_path (it can import `Base` and `REGISTRY` from the module
    eraselab_test_shared) and put tmp_path on sys.path."""
    shared = types.ModuleType("eraselab_test_shared")
    shared.Base, shared.REGISTRY = Base, registry
    monkeypatch.setitem(sys.modules, "eraselab_test_shared", shared)
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_register_get_and_names_in_registration_order():
    reg = Registry("widget", base=Base)
    reg.add("beta", Beta)

    @reg.register("alpha")
    class Local(Alpha):
        pass

    assert reg.names() == ["beta", "alpha"]
    assert reg.get("beta") is Beta and reg.get("alpha") is Local
    assert "alpha" in reg and "gamma" not in reg


def test_unknown_name_is_one_line_listing_the_names_and_suggesting_the_closest():
    reg = Registry("widget", hint="`tool widgets` lists them")
    reg.add("esd-x", Alpha)
    reg.add("uce", Beta)
    with pytest.raises(EraseLabError) as info:
        reg.get("esd_x")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown widget 'esd_x'; did you mean 'esd-x'?")
    assert "esd-x, uce" in message and "`tool widgets` lists them" in message
    with pytest.raises(EraseLabError, match="unknown widget 'zzz'; choose one of"):
        reg.get("zzz")


def test_a_second_entry_under_a_name_is_refused_but_the_same_one_again_is_not():
    reg = Registry("widget")
    reg.add("a", Alpha)
    reg.add("a", Alpha)  # e.g. a module imported twice
    with pytest.raises(EraseLabError, match="widget 'a' is registered twice"):
        reg.add("a", Beta)
    reg.add("lazy", "somewhere:Thing")
    with pytest.raises(EraseLabError, match="registered twice"):
        reg.add("lazy", "elsewhere:Thing")
    assert reg.get("a") is Alpha


def test_entries_must_subclass_the_base():
    reg = Registry("widget", base=Base)
    with pytest.raises(EraseLabError, match="widget 'x' must be a subclass of Base"):
        reg.add("x", int)
    with pytest.raises(EraseLabError, match="must be a subclass of Base"):
        reg.add("f", lambda: Alpha())  # a factory function is not a class
    with pytest.raises(EraseLabError, match="'module:attr'"):
        reg.add("bad", "no_colon_here")


def test_lazy_entry_imports_its_module_only_when_asked_for(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, "eraselab_lazy_plugin_a", """
        from eraselab_test_shared import Base

        class Plugin(Base):
            pass
    """)
    reg = Registry("widget", base=Base)
    reg.add("plugin", f"{name}:Plugin")
    assert reg.names() == ["plugin"] and name not in sys.modules
    cls = reg.get("plugin")
    assert cls.__name__ == "Plugin" and issubclass(cls, Base) and name in sys.modules
    assert reg.get("plugin") is cls


def test_lazy_entry_whose_module_registers_itself_on_import_is_the_same_entry(tmp_path, monkeypatch):
    reg = Registry("widget", base=Base)
    name = _module(tmp_path, monkeypatch, "eraselab_lazy_plugin_b", """
        from eraselab_test_shared import REGISTRY, Base

        @REGISTRY.register("plugin")
        class Plugin(Base):
            pass
    """, registry=reg)
    reg.add("plugin", f"{name}:Plugin")
    cls = reg.get("plugin")
    assert cls.__module__ == name and reg.names() == ["plugin"]
    with pytest.raises(EraseLabError, match="registered twice"):
        reg.add("plugin", Alpha)


def test_a_misspelt_lazy_module_fails_loudly_instead_of_dropping_the_entry():
    reg = Registry("method")
    reg.add("uce", "eraselab.methods.ucee:UCE")
    assert reg.names() == ["uce"]  # still listed: nothing is skipped silently
    with pytest.raises(EraseLabError, match="method 'uce' is registered as 'eraselab.methods.ucee:UCE', but "
                                            "there is no module eraselab.methods.ucee"):
        reg.get("uce")
    reg.add("ghost", "eraselab.methods.registry:NoSuchClass")
    with pytest.raises(EraseLabError, match="eraselab.methods.registry has no 'NoSuchClass'"):
        reg.get("ghost")


def test_an_import_error_inside_an_existing_module_is_not_blamed_on_the_entry(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, "eraselab_lazy_plugin_c", "import eraselab_no_such_dependency\n")
    reg = Registry("widget")
    reg.add("broken", f"{name}:Thing")
    with pytest.raises(ModuleNotFoundError, match="eraselab_no_such_dependency"):
        reg.get("broken")


def test_entry_points_add_third_party_entries(monkeypatch):
    import importlib.metadata

    groups = {"eraselab.widgets": [EntryPoint("beta", f"{__name__}:Beta", "eraselab.widgets")]}
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: groups.get(group, []))
    reg = Registry("widget", base=Base, entry_points="eraselab.widgets")
    reg.add("alpha", Alpha)
    assert reg.names() == ["alpha", "beta"]
    assert reg.get("beta") is Beta


# ---- the four registries -----------------------------------------------------------------------------------
def test_every_builtin_method_evaluator_suite_and_hook_resolves_under_its_own_name():
    from eraselab.evaluators import Evaluator, evaluator_names, get_evaluator  # noqa: F401
    from eraselab.evaluators.base import EVALUATORS
    from eraselab.guidance import GUIDANCE, Guidance
    from eraselab.methods import Eraser, get_method, method_names
    from eraselab.suites import SUITES, Suite, suite_names

    assert method_names()[:3] == ["esd-x", "esd-u", "esd-x-strict"]  # the order `eraselab methods` lists
    for name in method_names():
        cls = get_method(name)
        assert issubclass(cls, Eraser) and cls.name == name
    # Other tests register evaluators of their own (a brightness judge, fault injectors): the built-ins lead.
    builtin = ["clip", "imagenet", "nudenet", "oracle", "vqa"]
    assert [n for n in evaluator_names() if n in builtin] == builtin
    for name in evaluator_names():
        assert issubclass(EVALUATORS.get(name), Evaluator)
    assert {"erasebench", "i2p", "imagenette", "see"} <= set(suite_names())
    assert all(issubclass(SUITES.get(n), Suite) for n in suite_names())
    assert set(GUIDANCE.names()) >= {"cfg", "negative_prompt", "sld"}
    assert all(GUIDANCE.get(kind).kind == kind for kind in GUIDANCE.names())
    assert issubclass(GUIDANCE.get("sld"), Guidance)


def test_a_method_registered_outside_the_package_is_listed_and_validated(monkeypatch):
    from eraselab.methods import METHODS, build_request, method_names, register
    from eraselab.methods.base import Eraser, MethodConfig

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # leave the real registry as it was

    @register
    class Outside(Eraser):
        name = "outside-method"
        description = "a test method"
        Config = MethodConfig

    assert method_names()[-1] == "outside-method"
    cls, request = build_request("outside-method", ["circle"])
    assert cls is Outside and list(request.targets) == ["circle"]
    with pytest.raises(EraseLabError, match="method 'esd-x' is registered twice"):
        register(type("Impostor", (Eraser,), {"name": "esd-x"}))


def test_unknown_guidance_kind_names_the_fix():
    from eraselab.guidance import guidance_for

    with pytest.raises(
        EraseLabError, match="the edit asks for guidance 'warp', which this eraselab does not know"
    ):
        guidance_for({"kind": "warp"})


def test_listing_names_imports_no_method_or_evaluator_module_and_guidance_needs_no_methods():
    # A fresh interpreter: what this test process imported already cannot tell.
    code = textwrap.dedent("""
        import json, sys
        from eraselab.methods import method_names
        from eraselab.evaluators import evaluator_names
        from eraselab.guidance import guidance_for
        names = method_names(), evaluator_names()
        hook = guidance_for({"kind": "sld", "concept": "circle", "params": {}})
        print(json.dumps({"hook": type(hook).__name__, "loaded": sorted(
            m for m in sys.modules if m.startswith(("eraselab.methods.", "eraselab.evaluators."))
            and m.rsplit(".", 1)[1] not in ("base", "registry", "params"))}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"hook": "SafeLatentGuidance", "loaded": []}


def test_a_method_from_outside_the_package_runs_through_bench(monkeypatch, tiny_model_dir, tmp_path):  # noqa: F811
    """A third-party eraser (here: halve one cross-attention value projection) registered from outside
    eraselab is validated, erased, generated and measured by `bench` like a built-in one."""
    import torch

    from eraselab.bench import run_bench
    from eraselab.edits import edit_from_changes, named_parameters, snapshot
    from eraselab.methods import METHODS, register
    from eraselab.methods.base import Eraser, MethodConfig

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))

    @register
    class HalveValues(Eraser):
        name = "halve-values"
        description = "halves the first cross-attention value projection"
        Config = MethodConfig

        def erase(self, pipe, request):
            name = next(n for n in named_parameters(pipe) if n.endswith("attn2.to_v.weight"))
            before = snapshot(pipe, [name])
            with torch.no_grad():
                named_parameters(pipe)[name].mul_(0.5)
            try:
                return edit_from_changes(pipe, before, self.name, targets=list(request.targets))
            finally:
                with torch.no_grad():
                    named_parameters(pipe)[name].copy_(before[name])

    results = run_bench(_spec(tiny_model_dir, methods=("halve-values",), suites=("see",), attention=False),
                        tmp_path / "run", say=lambda m: None, progress=False)
    assert "halve-values" in results["methods"]
    assert results["methods"]["halve-values"]["metrics"]["target.recognition"]["n"] > 0
