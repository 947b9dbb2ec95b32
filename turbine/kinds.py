"""Component kinds: what ``kind = "..."`` in a site file can name.

A kind is registered by the package that provides it, in the Python
entry-point group ``turbine.components`` (the plugin convention of the
ecosystem), so ``pip install lab-instruments`` makes the kinds of that
distribution available to ``turbine mcp`` without touching this repository::

    [project.entry-points."turbine.components"]
    audio = "lab_instruments.audio"      # KIND = "PACKAGE"

The value is a package that ``python -m PACKAGE`` runs.  For a
``[[component]]``, ``PACKAGE.component`` defines the component class
(``COMPONENT = TheClass``, or the one :class:`~turbine.component.Component`
subclass defined there).  This repository registers its own packages the same
way in ``pyproject.toml``.  A kind not registered (an uninstalled checkout)
still resolves to ``components.<kind>`` when that package exists.

``turbine components`` lists the kinds installed and where each comes from.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import re

import attrs

from .component import Component

#: The entry-point group components register in.
GROUP = "turbine.components"

_KIND = re.compile(r"[a-z][a-z0-9_]*\Z")


@attrs.frozen
class Kind:
    """One kind and where it comes from."""

    name: str
    #: The package ``python -m`` runs (``components.daq``).
    module: str
    #: The distribution that registered it ("" for a ``components.<kind>`` fallback).
    distribution: str = ""
    version: str = ""

    @property
    def origin(self) -> str:
        """Where it comes from, for people: ``turbine 0.1.0`` or ``components/ (not registered)``."""
        if self.distribution:
            return f"{self.distribution} {self.version}".strip()
        return "components/ (not registered)"

    def location(self) -> str:
        """The package's directory on this machine ("" if it cannot be found)."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return ""
        locations = list(spec.submodule_search_locations or ()) if spec is not None else []
        return locations[0] if locations else ""

    def runnable(self) -> bool:
        """Whether ``python -m MODULE`` can run it (the package has a ``__main__``)."""
        return _find(f"{self.module}.__main__")

    def component_class(self) -> type[Component]:
        """The component class of ``MODULE.component`` (see the module docstring).

        Raises:
            LookupError: the package has no component class (it may be a plain program).
            ImportError: the module cannot be imported.
        """
        if not _find(f"{self.module}.component"):
            raise LookupError(f"{self.module} has no component module")
        module = importlib.import_module(f"{self.module}.component")
        found = getattr(module, "COMPONENT", None)
        if found is None:
            classes = [
                c
                for _, c in inspect.getmembers(module, inspect.isclass)
                if issubclass(c, Component) and c.__module__ == module.__name__
            ]
            if len(classes) == 1:
                found = classes[0]
        if not (isinstance(found, type) and issubclass(found, Component)):
            raise LookupError(f"{self.module}.component defines no COMPONENT class")
        return found


def valid_name(name: str) -> bool:
    """Whether ``name`` can be a kind: lowercase letters, digits and ``_``, starting with a letter."""
    return _KIND.match(name) is not None


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _registered() -> list[Kind]:
    """Every registration in :data:`GROUP`, in the order Python finds them."""
    out = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        if not _KIND.match(ep.name):
            continue
        dist = ep.dist
        out.append(
            Kind(
                name=ep.name,
                module=ep.module,
                distribution=dist.name if dist is not None else "",
                version=dist.version if dist is not None else "",
            )
        )
    return out


def installed() -> dict[str, Kind]:
    """Every kind registered in :data:`GROUP`, by name (the first registration of a name wins)."""
    kinds: dict[str, Kind] = {}
    for kind in _registered():
        kinds.setdefault(kind.name, kind)
    return kinds


def hidden() -> list[tuple[Kind, Kind]]:
    """Registrations that lose to an earlier one of the same name: ``(hidden, used)`` pairs.

    Two distributions giving one kind name is a mistake only a person can
    settle (rename one, or uninstall one); ``turbine components`` says so.
    """
    used = installed()
    # The same distribution found twice (a checkout's egg-info beside its install) is no clash.
    lost = dict.fromkeys(k for k in _registered() if k != used[k.name])
    return [(k, used[k.name]) for k in lost]


def find(name: str) -> Kind | None:
    """The kind called ``name``: registered, else ``components.<name>`` if it exists."""
    if not _KIND.match(name):
        return None
    kind = installed().get(name)
    if kind is not None:
        return kind
    if _find(f"components.{name}"):
        return Kind(name=name, module=f"components.{name}")
    return None


def available(components_only: bool = False) -> list[Kind]:
    """The kinds that can run (with ``components_only``: those with a component class module)."""
    kinds = dict(installed())
    try:
        import components
    except ImportError:
        pass
    else:
        for m in pkgutil.iter_modules(components.__path__):
            if m.ispkg and m.name not in kinds and _KIND.match(m.name):
                kinds[m.name] = Kind(name=m.name, module=f"components.{m.name}")
    out = [k for _, k in sorted(kinds.items()) if k.runnable()]
    if components_only:
        out = [k for k in out if _find(f"{k.module}.component")]
    return out
