"""Records: what `@dataclass` (`frozen=True`, `kw_only=True`) gives the doctor's own classes (the
knowledge's rows, the advisories, findings, snapshots), built with closures instead of `exec`.

A dataclass compiles its `__init__`, `__repr__`, `__eq__`, `__hash__`, `__setattr__` and
`__delattr__` from source text when its class is created: 1-2 ms a class (more with many fields),
and `import dataclasses` brings inspect, ast, dis and tokenize. The doctor creates these classes
on every run, before it reads anything, so they were 15-30 ms of a 150 ms run. Same behaviour for
what the doctor uses: keyword (or positional) construction with defaults and default factories,
`__post_init__`, field-wise equality (and hashing when frozen; a mutable record is unhashable),
the same repr, assignment refused when frozen, `as_dict` for `dataclasses.asdict`.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")
_MISSING: Any = object()


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen record (dataclasses.FrozenInstanceError's role)."""


class _Field:
    __slots__ = ("default", "default_factory", "repr", "compare")

    def __init__(self, default: Any, default_factory: Any, repr: bool, compare: bool):  # noqa: A002
        self.default, self.default_factory, self.repr, self.compare = default, default_factory, repr, compare


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] = _MISSING, repr: bool = True,  # noqa: A002
          compare: bool = True) -> Any:
    """A field's default, or the factory that makes a fresh one per instance; left out of the repr
    or of equality (as dataclasses.field)."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory, repr, compare)


def as_dict(obj: Any) -> Any:
    """dataclasses.asdict for records: records become dicts, recursively through dicts, lists and
    tuples (copies); other values as they are (the doctor's are JSON-like)."""
    fields = getattr(type(obj), "__record_fields__", None)
    if fields is not None:
        return {name: as_dict(getattr(obj, name)) for name in fields}
    if isinstance(obj, dict):
        return type(obj)((as_dict(k), as_dict(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_dict(v) for v in obj)
    return obj


def _collect_fields(cls: type) -> dict[str, tuple[Any, Any, bool, bool]]:
    """{name: (default, factory, in repr, compared)}: the record bases' fields first, then the
    class's own annotations."""
    fields: dict[str, tuple[Any, Any, bool, bool]] = {}
    for base in reversed(cls.__mro__[1:]):
        fields.update(base.__dict__.get("__record_fields__", {}))
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        given = cls.__dict__.get(name, _MISSING)
        if isinstance(given, _Field):
            default, factory = given.default, given.default_factory
            if default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, default)
            fields[name] = (default, factory, given.repr, given.compare)
        else:
            fields[name] = (given, _MISSING, True, True)
    return fields


def frozen_record(cls: type[T] | None = None, *, kw_only: bool = False) -> Any:
    """Class decorator: `@frozen_record` or `@frozen_record(kw_only=True)` (dataclass(frozen=True, ...))."""
    return record(cls, frozen=True, kw_only=kw_only)


def record(cls: type[T] | None = None, *, frozen: bool = False, kw_only: bool = False) -> Any:
    """Class decorator: `@record`, `@record(frozen=True, kw_only=True)` (as dataclass's arguments)."""

    def wrap(cls: type[T]) -> type[T]:
        fields = _collect_fields(cls)
        names = tuple(fields)
        items = tuple((name, f[0], f[1]) for name, f in fields.items())
        shown = tuple(name for name, f in fields.items() if f[2])
        compared = tuple(name for name, f in fields.items() if f[3])
        qualname = cls.__qualname__
        setter = object.__setattr__

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if args:
                if kw_only or len(args) > len(names):
                    most = 1 if kw_only else len(names) + 1
                    raise TypeError(f"{qualname}.__init__() takes {most} positional argument"
                                    f"{'s' if most > 1 else ''} but {len(args) + 1} were given")
                for name, arg in zip(names, args):
                    if name in kwargs:
                        raise TypeError(f"{qualname}.__init__() got multiple values for argument {name!r}")
                    kwargs[name] = arg
            for name in kwargs:
                if name not in fields:
                    raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument {name!r}")
            for name, default, factory in items:
                if name in kwargs:
                    got = kwargs[name]
                elif default is not _MISSING:
                    got = default
                elif factory is not _MISSING:
                    got = factory()
                else:
                    raise TypeError(f"{qualname}.__init__() missing 1 required argument: {name!r}")
                setter(self, name, got)
            post_init = getattr(self, "__post_init__", None)
            if post_init is not None:
                post_init()

        def values(self) -> tuple:
            return tuple([getattr(self, name) for name in compared])

        def __repr__(self) -> str:
            return f"{type(self).__qualname__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in shown) + ")"

        def __eq__(self, other: Any) -> Any:
            if other.__class__ is self.__class__:
                return values(self) == values(other)
            return NotImplemented

        def __hash__(self) -> int:
            return hash(values(self))

        def __setattr__(self, name: str, value: Any) -> None:
            if type(self) is cls or name in fields:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")
            super(cls, self).__setattr__(name, value)

        def __delattr__(self, name: str) -> None:
            if type(self) is cls or name in fields:
                raise FrozenInstanceError(f"cannot delete field {name!r}")
            super(cls, self).__delattr__(name)

        for fn in (__init__, __repr__, __eq__, *((__hash__, __setattr__, __delattr__) if frozen else ())):
            fn.__qualname__ = f"{qualname}.{fn.__name__}"
            if fn.__name__ not in cls.__dict__:  # as dataclasses: a method the class writes itself stays
                setattr(cls, fn.__name__, fn)
        if not frozen and "__hash__" not in cls.__dict__:
            cls.__hash__ = None  # as a dataclass with eq and not frozen: unhashable
        cls.__record_fields__ = fields
        cls.__match_args__ = () if kw_only else names
        return cls

    return wrap if cls is None else wrap(cls)
