"""turbine._values: the cheap value classes the client and the protocol messages are made of."""

from typing import ClassVar

import pytest

from turbine._values import BOUND_CALLS, Value, field, replace, value_dict


class Point(Value):
    unit: ClassVar[str] = "mm"
    x: int
    y: int = 0
    tags: list[str] = field(factory=list)
    secret: str | None = field(default=None, repr=False)


class Named(Point, kw_only=True):
    name: str


class Pair(Value):
    a: int
    b: str


def test_fields_in_order_positional_with_defaults_and_a_fresh_factory_value_each():
    assert [f.name for f in Point.fields] == ["x", "y", "tags", "secret"]
    a, b = Point(1), Point(1, 2, ["t"])
    assert (a.x, a.y, a.tags, b.tags) == (1, 0, [], ["t"])
    assert Point(1).tags is not Point(1).tags
    assert Point.unit == "mm"  # a ClassVar is not a field
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'x'"):
        Point()  # type: ignore[call-arg]


def test_keyword_only_subclass_takes_its_base_fields_first():
    n = Named(x=1, name="a")
    assert [f.name for f in Named.fields] == ["x", "y", "tags", "secret", "name"]
    assert (n.x, n.name) == (1, "a")
    with pytest.raises(TypeError):
        Named(1, name="a")  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Named(x=1, name="a", z=2)  # type: ignore[call-arg]


def test_equality_hash_repr_replace_and_dict():
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(1, 3)
    assert Point(1) != Named(x=1, name="a")  # another class is never equal
    assert hash(Pair(1, "b")) == hash(Pair(1, "b"))  # by value (a list field: unhashable)
    assert repr(Point(1, secret="hidden")) == "Point(x=1, y=0, tags=[])"
    moved = replace(Point(1, 2, ["t"]), y=5)
    assert moved == Point(1, 5, ["t"])
    with pytest.raises(TypeError):
        replace(Point(1), z=1)
    nested = Point(1, tags=[Point(2)], secret=None)  # type: ignore[list-item]
    assert value_dict(nested) == {
        "x": 1,
        "y": 0,
        "tags": [{"x": 2, "y": 0, "tags": [], "secret": None}],
        "secret": None,
    }
    with pytest.raises(AttributeError):  # slots: no other attributes
        Point(1).z = 3  # type: ignore[attr-defined]


def test_the_generated_init_is_made_on_first_use_and_shown_by_inspect():
    import inspect

    class Late(Value, kw_only=True):
        a: int
        b: str = "x"

    assert str(inspect.signature(Late)) == "(*, a, b='x')"  # before any instance
    first = Late.__init__
    for _ in range(BOUND_CALLS):
        assert Late(a=1).b == "x"
    assert Late.__init__ is first  # the first calls are bound without it
    assert Late(a=1).b == "x"
    assert Late.__init__ is not first  # the generated one took its place
    assert Late.__init__.__qualname__ == "Late.__init__"
    assert (Late(a=2, b="y").a, Late(a=2, b="y").b) == (2, "y")
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'a'"):
        Late()  # type: ignore[call-arg]


CALLS = [
    ((1,), {}),
    ((1, 2), {"secret": "s"}),
    ((1, 2, ["t"], None), {}),
    ((), {"x": 1, "tags": ["u"]}),
    ((1,), {"y": 3, "tags": None}),
]
BAD_CALLS = [
    ((), {}),  # x missing
    ((1, 2, [], None, 5), {}),  # too many
    ((1,), {"x": 2}),  # x twice
    ((1,), {"z": 2}),  # no such field
]


def fresh_point() -> type[Value]:
    class P(Value):
        x: int
        y: int = 0
        tags: list[str] = field(factory=list)
        secret: str | None = field(default=None, repr=False)

    return P


def outcome(cls: type[Value], args: tuple, kwargs: dict) -> object:
    try:
        v = cls(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return [getattr(v, f.name) for f in cls.fields]


def test_the_first_calls_store_what_the_generated_init_stores_and_raise_its_errors():
    bound, generated = fresh_point(), fresh_point()
    for _ in range(BOUND_CALLS + 1):
        generated(1)  # compiled now
    for args, kwargs in CALLS:
        assert outcome(bound, args, kwargs) == outcome(generated, args, kwargs)
    assert bound(1).tags is not bound(1).tags  # a fresh factory value each
    for args, kwargs in BAD_CALLS:
        assert outcome(fresh_point(), args, kwargs) == outcome(generated, args, kwargs)
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 positional"):
        Named(1, name="a")  # type: ignore[misc]
