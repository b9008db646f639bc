"""A method that fails at once, registered when this module is imported: tests/test_bench_report.py imports it
(into a copy of the registry) to check that a variant failing in a bench worker process stops the others. It
lives in its own module so that a spawned worker can import it and find it registered."""
from eraselab.errors import EraseLabError
from eraselab.methods import register
from eraselab.methods.base import Eraser, MethodConfig


@register
class FailsAtOnce(Eraser):
    name = "fails-at-once"
    description = "raises a planted error as soon as it erases"
    Config = MethodConfig

    def erase(self, pipe, request):
        raise EraseLabError("planted failure of a bench variant")
