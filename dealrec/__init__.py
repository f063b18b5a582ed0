"""dealrec: pick the few fine-tuning samples that matter for an LLM-based recommender.

The Python API (docs/api.md)::

    from dealrec import prepare, train_surrogate, score, select, export, prune, compare

each a thin wrapper, in ``dealrec.api``, over the library function that its command calls, raising
``DealrecError`` on bad input. ``import dealrec`` loads none of them: a name is looked up on first use,
and ``dealrec.api`` (torch included) is imported at the first call.

Six of those names are also the modules of their commands (``dealrec.select`` holds ``run_select``),
and Python reads ``from dealrec import select`` and ``import dealrec.select as select`` from the same
package attribute. So the attribute is the module, made callable: ``dealrec.select(run, n=...)`` calls
``dealrec.api.select``, and ``dealrec.select.run_select`` is the module's function as before, whichever
import came first.
"""
import importlib
import inspect
import sys
import types

from dealrec_core import __version__  # noqa: F401  (one version, kept by the ground floor)
from dealrec_core.errors import DealrecError   # what the API raises on bad input

API = ("prepare", "train_surrogate", "score", "select", "export", "prune", "compare")
COMMAND_MODULES = ("prepare", "score", "select", "export", "prune", "compare")   # dealrec.<name> is a module too
__all__ = [*API, "DealrecError"]


class _CommandModule(types.ModuleType):
    """A command's module that is also its API function (see the package's docstring)."""

    def __call__(self, *args, **kwargs):
        return self.api_function()(*args, **kwargs)

    def api_function(self):
        from dealrec import api

        return getattr(api, self.__name__.rpartition(".")[2])

    @property
    def __signature__(self):   # inspect.signature, help() and notebooks show the API function's
        return inspect.signature(self.api_function())


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the import system sets each submodule as an attribute of its package: a command's module becomes callable
        if name in COMMAND_MODULES and isinstance(value, types.ModuleType) and \
                value.__name__ == f"{self.__name__}.{name}":
            value.__class__ = _CommandModule
        super().__setattr__(name, value)

    def __getattr__(self, name):   # only for names not set yet
        if name in COMMAND_MODULES:
            return importlib.import_module(f"{self.__name__}.{name}")
        if name in API:
            from dealrec import api

            return getattr(api, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
