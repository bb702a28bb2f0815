"""oom_journal.records: what it generates is what dataclasses generates for the same class, and
what it does not support is refused, not silently wrong."""
from __future__ import annotations

import dataclasses

import pytest

from oom_journal import records


def both(frozen: bool):
    """The same class, once through dataclasses, once through records."""
    made = []
    for decorate, make_field in ((dataclasses.dataclass, dataclasses.field), (records.dataclass, records.field)):
        class Point:
            x: int
            y: int = 2
            tags: list = make_field(default_factory=list)

            def norm(self) -> int:
                return self.x + self.y

        made.append(decorate(frozen=frozen)(Point))
    return made


@pytest.mark.parametrize("frozen", [False, True])
def test_the_same_methods_as_dataclasses(frozen):
    ref, ours = both(frozen)
    for args, kwargs in [((1,), {}), ((1, 3), {}), ((), {"x": 5, "tags": ["a"]}), ((1, 2, [3]), {})]:
        a, b = ref(*args, **kwargs), ours(*args, **kwargs)
        assert repr(a) == repr(b) and (a.x, a.y, a.tags) == (b.x, b.y, b.tags) and b.norm() == a.norm()
        assert b == ours(*args, **kwargs) and b != ours(99) and (b == a) is False  # another class: NotImplemented
    assert ours(1).tags is not ours(1).tags  # a new list each time
    assert records.field_names(ours) == tuple(f.name for f in dataclasses.fields(ref)) == ("x", "y", "tags")
    assert not hasattr(ours, "tags") and ours.y == 2  # the class attributes, as dataclasses leaves them
    with pytest.raises(TypeError):
        ours()  # x is required
    if frozen:
        assert hash(ours(1, 2, ("a",))) == hash(ref(1, 2, ("a",)))  # the fields' tuple's, as dataclasses
        with pytest.raises(records.FrozenInstanceError):
            ours(1).x = 2  # type: ignore[misc]
        with pytest.raises(AttributeError):
            del ours(1).y  # type: ignore[misc]
    else:
        assert ours.__hash__ is None  # mutable and compared by value: unhashable, as dataclasses
        p = ours(1)
        p.x = 7
        assert p.x == 7


def test_methods_the_class_defines_are_kept():
    @records.dataclass(frozen=True)
    class Key:
        a: int

        def __repr__(self) -> str:
            return "key"

        def __eq__(self, other) -> bool:
            return True

        def __hash__(self) -> int:
            return 1

    assert repr(Key(1)) == "key" and Key(1) == Key(2) and hash(Key(5)) == 1


def test_what_is_not_supported_is_refused():
    with pytest.raises(TypeError, match="non-default"):
        @records.dataclass
        class Bad:
            a: int = 1
            b: int  # type: ignore[misc]

    @records.dataclass
    class Base:
        a: int

    with pytest.raises(TypeError, match="base"):
        @records.dataclass
        class Sub(Base):
            b: int

    with pytest.raises(TypeError, match="__post_init__"):
        @records.dataclass
        class Post:
            a: int

            def __post_init__(self) -> None:
                pass
