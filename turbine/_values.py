"""Value classes that are cheap to define: what a client imports is built of them.

``class Point(Value): x: int; y: int = 0`` makes a class with ``__slots__``, an
``__init__`` taking the annotated fields (in order, a base class's first;
``kw_only=True`` in the class statement: by keyword only), a field-by-field
``__eq__``, ``__hash__`` and ``__repr__``.  Values are never changed:
:func:`replace` makes a changed copy, :func:`value_dict` the fields as a dict.

Why not attrs, whose habits these follow: every ``import turbine`` builds these
classes, and attrs built each in about 0.4 ms of CPU (generated code for each
method, string annotations resolved), against about 0.1 ms here (the protocol
messages' 19: 8.8 against 2.0 ms).  That values are never changed is checked
by the type checker (``frozen_default`` below), not at run time: a guarding
``__setattr__`` makes each field's store a call (a put message of 13 fields:
2.1 us to build, against 0.6 us), and the broker builds a message per put.
"""

import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

#: No default: the field is required.
_REQUIRED: Any = object()
_NO_METADATA: Mapping[str, Any] = {}
_CLASS_VAR = ("ClassVar", "typing.ClassVar")


class Field:
    """One field of a value class: its name, annotation and what :func:`field` said."""

    __slots__ = ("name", "type", "default", "factory", "repr", "metadata")

    def __init__(
        self,
        default: Any = _REQUIRED,
        factory: Callable[[], Any] | None = None,
        repr: bool = True,
        metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        self.name = ""
        self.type: Any = None
        self.default = default
        self.factory = factory
        self.repr = repr
        self.metadata = metadata

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED and self.factory is None


def field(
    *,
    default: Any = _REQUIRED,
    factory: Callable[[], Any] | None = None,
    repr: bool = True,
    metadata: Mapping[str, Any] = _NO_METADATA,
) -> Any:
    """A field with more to say than its default: ``factory`` makes each value's
    default, ``repr=False`` leaves it out of the repr (a secret), ``metadata`` is
    kept for whoever reads the class's :attr:`Value.fields`."""
    return Field(default, factory, repr, metadata)


@typing.dataclass_transform(frozen_default=True, field_specifiers=(field,))
class _ValueClass(type):
    """Makes a value class of a class body: its annotated names but ``ClassVar``
    ones are its fields, after its base's."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        kw_only: bool | None = None,
    ) -> "_ValueClass":
        own: list[Field] = []
        for fname, annotation in namespace.get("__annotations__", {}).items():
            if typing.get_origin(annotation) is ClassVar or (
                isinstance(annotation, str) and annotation.startswith(_CLASS_VAR)
            ):
                continue  # (a string: the module has ``from __future__ import annotations``)
            given = namespace.pop(fname, _REQUIRED)
            f = given if isinstance(given, Field) else Field(given)
            f.name, f.type = fname, annotation
            own.append(f)
        namespace["__slots__"] = tuple(f.name for f in own)
        cls = super().__new__(mcls, name, bases, namespace)
        if kw_only is None:
            kw_only = getattr(cls, "kw_only", False)
        every = (*getattr(cls, "fields", ()), *own)
        cls.fields = every  # type: ignore[attr-defined]
        cls.kw_only = kw_only  # type: ignore[attr-defined]
        cls.__init__ = _init_on_first_calls(cls)  # type: ignore[misc]
        return cls

    def __init__(cls, *args: Any, kw_only: bool | None = None) -> None:
        super().__init__(*args)

    @property
    def __signature__(cls) -> Any:
        """The fields as ``__init__`` takes them (what ``help`` and ``inspect`` show)."""
        import inspect

        init = _make_init(cls.__name__, cls.fields, cls.kw_only)  # type: ignore[attr-defined]
        sig = inspect.signature(init)
        return sig.replace(parameters=list(sig.parameters.values())[1:])


#: Calls of a value class's ``__init__`` made by binding its fields one by one
#: before its generated one is compiled (see :func:`_init_on_first_calls`).
BOUND_CALLS = 8


def _init_on_first_calls(cls: type) -> Callable[..., None]:
    """An ``__init__`` that stores the fields itself for the class's first
    :data:`BOUND_CALLS` instances, then puts the class's generated one in its place
    and passes the call on: ``import turbine`` defines dozens of value classes
    (every protocol message) of which a client makes a few, most once (a history
    client's hello, client_hello, dialer, fetch and reply), and compiling an
    ``__init__`` costs 40-170 us of a short script's start-up.  A call the
    binding here does not take as it is (a missing field, an unknown or repeated
    one, too many positional arguments) goes to the generated ``__init__``, which
    raises Python's own TypeError."""
    calls = 0

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        fields: tuple[Field, ...] = cls.fields  # type: ignore[attr-defined]
        if calls <= BOUND_CALLS and len(args) <= (0 if cls.kw_only else len(fields)):  # type: ignore[attr-defined]
            given = {f.name: value for f, value in zip(fields, args, strict=False)}
            if given.keys().isdisjoint(kwargs):
                given.update(kwargs)
                if _bind(self, fields, given):
                    return
        init = _make_init(cls.__name__, fields, cls.kw_only)  # type: ignore[attr-defined]
        cls.__init__ = init  # type: ignore[misc]
        init(self, *args, **kwargs)

    return __init__


def _bind(self: Any, fields: tuple[Field, ...], given: dict[str, Any]) -> bool:
    """Store ``given`` and the defaults of the rest of ``fields`` on ``self``, as the
    generated ``__init__`` does; False (nothing stored) when a field is missing or
    ``given`` names one ``fields`` does not have."""
    found = 0
    for f in fields:
        if f.name in given:
            found += 1
        elif f.default is _REQUIRED and f.factory is None:
            return False
    if found != len(given):
        return False
    for f in fields:
        if f.name in given:
            value = given[f.name]
            if value is _REQUIRED and f.factory is not None:
                value = f.factory()
        else:
            value = f.default if f.factory is None else f.factory()
        setattr(self, f.name, value)
    return True


def _make_init(name: str, fields: tuple[Field, ...], kw_only: bool) -> Callable[..., None]:
    """An ``__init__`` storing each of ``fields``: generated code, as fast as a
    hand-written one (the hot paths build a message per put)."""
    params, body = [], []
    env: dict[str, Any] = {"_REQUIRED": _REQUIRED}
    for f in fields:
        if f.factory is not None:
            env[f"_f_{f.name}"] = f.factory
            params.append(f"{f.name}=_REQUIRED")
            body.append(f"self.{f.name} = _f_{f.name}() if {f.name} is _REQUIRED else {f.name}")
        else:
            if f.default is not _REQUIRED:
                env[f"_d_{f.name}"] = f.default
            params.append(f.name if f.default is _REQUIRED else f"{f.name}=_d_{f.name}")
            body.append(f"self.{f.name} = {f.name}")
    if kw_only and params:
        params.insert(0, "*")
    lines = [f"def __init__({', '.join(['self', *params])}):", *(f"    {b}" for b in body)]
    exec(compile("\n".join([*lines, "    pass"]), f"<{name}.__init__>", "exec"), env)
    init: Callable[..., None] = env["__init__"]
    init.__qualname__ = f"{name}.__init__"
    return init


class Value(metaclass=_ValueClass):
    """The base of a value class (see the module's description)."""

    #: Every field, the base class's first.
    fields: ClassVar[tuple[Field, ...]] = ()
    #: Whether ``__init__`` takes the fields by keyword only.
    kw_only: ClassVar[bool] = False

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.fields if f.repr)
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in self.fields)

    def __hash__(self) -> int:
        return hash((type(self), *(getattr(self, f.name) for f in self.fields)))


V = typing.TypeVar("V", bound=Value)


def replace(value: V, **changes: Any) -> V:
    """A copy of ``value`` with ``changes`` to its fields.

    Raises:
        TypeError: a name in ``changes`` is not one of its fields.
    """
    fields = {f.name: getattr(value, f.name) for f in value.fields}
    return type(value)(**(fields | changes))


def value_dict(value: Value) -> dict[str, Any]:
    """``value``'s fields by name; values, and lists and tuples of them, within it as
    dicts and lists too (what ``attrs.asdict`` gives, for JSON)."""
    return {f.name: _plain(getattr(value, f.name)) for f in value.fields}


def _plain(x: Any) -> Any:
    if isinstance(x, Value):
        return value_dict(x)
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x
