"""@dataclass and field(), the part of the standard library's dataclasses that this project uses,
without its imports: dataclasses imports inspect, which imports ast, dis, tokenize and more, and
was 1.1 MiB of the idle daemon's RSS (issue #18; measured as an import's VmRSS delta here, Python
3.11). What is generated is what dataclasses generates for these uses:

- `@dataclass` and `@dataclass(frozen=True)` on a class without dataclass bases;
- fields from the class's own annotations, in order, a class attribute as the default and
  `field(default_factory=...)`;
- __init__, __repr__, __eq__ (same class, fields compared as a tuple), unless the class defines
  them; __hash__: from the fields when frozen, else None (an unhashable mutable record), unless
  the class defines it; frozen: assigning or deleting a field raises FrozenInstanceError;
- the field names in __record_fields__ (field_names()).

Not supported, and refused where it would be silent: ClassVar, InitVar, __post_init__, bases that are
records, order=, slots=, kw_only=, match statements (__match_args__). Type checkers see it as a dataclass (PEP 681 dataclass_transform).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar, dataclass_transform, overload

T = TypeVar("T")


class FrozenInstanceError(AttributeError):
    """As dataclasses.FrozenInstanceError: a field of a frozen record was assigned or deleted."""


class _Factory:
    __slots__ = ("default_factory",)

    def __init__(self, default_factory: Callable[[], Any]):
        self.default_factory = default_factory


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is made anew for each instance (as dataclasses.field(default_factory=))."""
    return _Factory(default_factory)


def field_names(cls_or_instance: Any) -> tuple:
    """The fields' names, in order (as [f.name for f in dataclasses.fields(x)])."""
    return cls_or_instance.__record_fields__


@overload
@dataclass_transform(field_specifiers=(field,))
def dataclass(cls: type[T], /) -> type[T]: ...


@overload
def dataclass(*, frozen: bool = False) -> Callable[[type[T]], type[T]]: ...


def dataclass(cls: Optional[type] = None, /, *, frozen: bool = False) -> Any:
    def wrap(c: type) -> type:
        return _process(c, frozen)

    return wrap if cls is None else wrap(cls)


def _process(cls: type, frozen: bool) -> type:
    for base in cls.__mro__[1:]:
        if "__record_fields__" in base.__dict__:
            raise TypeError(f"{cls.__qualname__}: a record's base {base.__qualname__} is a record (not supported)")
    if "__post_init__" in cls.__dict__:
        raise TypeError(f"{cls.__qualname__}: __post_init__ is not supported")
    annotations = cls.__dict__.get("__annotations__", {})
    names = tuple(annotations)
    for name in names:
        kind = str(annotations[name])
        if kind.startswith(("ClassVar", "typing.ClassVar", "InitVar", "dataclasses.InitVar")):
            raise TypeError(f"{cls.__qualname__}.{name}: ClassVar and InitVar are not supported")
    # __init__'s source, compiled as dataclasses does (its _create_fn): the defaults and the
    # factories are names in its globals.
    scope: dict = {"__object_setattr": object.__setattr__}
    params, body = [], []
    for name in names:
        default = cls.__dict__.get(name, _NO_DEFAULT)
        if isinstance(default, _Factory):
            scope[f"__factory_{name}"] = default.default_factory
            scope["__no_value"] = _NO_DEFAULT
            params.append(f"{name}=__no_value")
            value = f"__factory_{name}() if {name} is __no_value else {name}"
            delattr(cls, name)  # as dataclasses: no class attribute for a factory's field
        elif default is not _NO_DEFAULT:
            scope[f"__default_{name}"] = default
            params.append(f"{name}=__default_{name}")
            value = name
        else:
            if any("=" in p for p in params):
                raise TypeError(f"{cls.__qualname__}: non-default argument {name!r} follows default argument")
            params.append(name)
            value = name
        body.append(f"__object_setattr(self, {name!r}, {value})" if frozen else f"self.{name} = {value}")
    methods: dict = {}
    if "__init__" not in cls.__dict__:
        src = f"def __init__(self, {', '.join(params)}):\n    " + ("\n    ".join(body) or "pass") + "\n"
        exec(src, scope, methods)  # noqa: S102 (our own source, from the class's field names)
        methods["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    if "__repr__" not in cls.__dict__:
        def __repr__(self: Any) -> str:
            return (f"{type(self).__qualname__}("
                    + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")")
        methods["__repr__"] = __repr__
    explicit_eq = "__eq__" in cls.__dict__
    if not explicit_eq:
        def __eq__(self: Any, other: Any) -> Any:
            if other.__class__ is self.__class__:
                return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)
            return NotImplemented
        methods["__eq__"] = __eq__
    # A class body that defines __eq__ without __hash__ has __hash__ = None, which is no choice of
    # its own (dataclasses' has_explicit_hash, _process_class).
    explicit_hash = cls.__dict__.get("__hash__", _NO_DEFAULT) is not None and "__hash__" in cls.__dict__
    if not explicit_hash:
        if frozen:
            def __hash__(self: Any) -> int:
                return hash(tuple(getattr(self, n) for n in names))
            methods["__hash__"] = __hash__
        else:
            methods["__hash__"] = None
    if frozen:
        def __setattr__(self: Any, name: str, value: Any) -> None:
            if type(self) is cls or name in names:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")
            object.__setattr__(self, name, value)

        def __delattr__(self: Any, name: str) -> None:
            if type(self) is cls or name in names:
                raise FrozenInstanceError(f"cannot delete field {name!r}")
            object.__delattr__(self, name)
        methods["__setattr__"], methods["__delattr__"] = __setattr__, __delattr__
    for name, fn in methods.items():
        if fn is not None and name != "__init__":
            fn.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, fn)
    type.__setattr__(cls, "__record_fields__", names)
    return cls


_NO_DEFAULT: Any = type("_NoDefault", (), {"__repr__": lambda self: "<no default>"})()
