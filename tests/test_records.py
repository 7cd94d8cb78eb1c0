"""records.frozen_record behaves as @dataclass(frozen=True[, kw_only=True]) for what the doctor uses."""

from __future__ import annotations

import dataclasses

import pytest

from gptoss_doctor.records import FrozenInstanceError, field, frozen_record


class _Base:
    note: str  # a plain base's annotation is not a field (as with dataclasses)


def make(decorate, fld, **kw):
    @decorate(**kw)
    class Row(_Base):
        name: str
        size: int = 3
        tags: tuple = fld(default=())
        env: dict = fld(default_factory=dict)
    return Row


REC = make(frozen_record, field, kw_only=True)
DC = make(dataclasses.dataclass, dataclasses.field, frozen=True, kw_only=True)


def test_construction_defaults_repr_eq_hash_match_a_dataclass():
    for cls in (REC, DC):
        a, b = cls(name="x"), cls(name="x", size=3)
        assert a == b and a != cls(name="y")
        with pytest.raises(TypeError):
            hash(a)  # hashed by its fields, and a dict is not hashable
        assert (a.size, a.tags, a.env) == (3, (), {}) and a.env is not cls(name="x").env  # a fresh dict each
        assert a.__eq__(object()) is NotImplemented
    assert repr(REC(name="x", size=4)).split("(", 1)[1] == repr(DC(name="x", size=4)).split("(", 1)[1]
    assert REC.size == DC.size == 3 and not hasattr(REC, "env") and not hasattr(DC, "env")
    assert REC.__match_args__ == DC.__match_args__ == ()


def test_assignment_is_refused_and_bad_arguments_are_type_errors():
    row = REC(name="x")
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'name'"):
        row.name = "y"
    with pytest.raises(AttributeError):
        del row.size
    for bad in (lambda: REC("x"), lambda: REC(), lambda: REC(name="x", colour="red")):
        with pytest.raises(TypeError):
            bad()
    for args, kwargs in ((("x",), {}), ((), {}), ((), {"name": "x", "colour": "red"})):  # as the dataclass
        with pytest.raises(TypeError):
            DC(*args, **kwargs)


def test_positional_fields_and_inheritance_keep_the_dataclass_order():
    @frozen_record
    class P:
        a: int
        b: int = 2

    @frozen_record
    class Q(P):
        c: int = 5

    q = Q(1, 7)
    assert (q.a, q.b, q.c) == (1, 7, 5) and Q.__match_args__ == ("a", "b", "c")
    assert repr(q).endswith("Q(a=1, b=7, c=5)") and q != P(1, 7)
    assert hash(Q(1, 7)) == hash(q) and {q: 1}[Q(1, 7, 5)] == 1
    with pytest.raises(TypeError):
        P(1, a=2)
