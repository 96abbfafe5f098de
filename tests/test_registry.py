"""The one registry style: case rule, duplicates, did-you-mean (properties) and its users."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlox_dp.config import did_you_mean
from rlox_dp.registry import DuplicateNameError, Registry, UnknownNameError, suggest

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+/.",
               min_size=1, max_size=12)
NAMES = st.lists(NAME, min_size=1, max_size=6, unique_by=str.casefold)


@st.composite
def recased(draw: st.DrawFn, name: str) -> str:
    """``name`` with each letter's case drawn at random."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))


@settings(max_examples=40, deadline=None)
@given(names=NAMES, data=st.data())
def test_lookup_ignores_case_and_lists_the_registered_spelling(names, data):
    registry: Registry[object] = Registry("widget")
    objects = {name: object() for name in names}
    for name, obj in objects.items():
        assert registry.register(name, obj) is obj
    assert registry.names() == names  # registration order, registered spelling
    for name, obj in objects.items():
        variant = data.draw(recased(name))
        assert variant in registry
        assert registry.get(variant) is obj
        assert registry.canonical(variant) == name
        registry.register(variant, obj)  # the same object again: allowed, nothing changes
        with pytest.raises(DuplicateNameError, match="already registered"):
            registry.register(variant, object())
    assert registry.names() == names and len(registry) == len(names)


@settings(max_examples=40, deadline=None)
@given(names=NAMES, query=NAME)
def test_a_miss_names_kind_name_suggestion_and_known_names(names, query):
    registry: Registry[int] = Registry("gadget")
    for i, name in enumerate(names):
        registry.register(name, i)
    if query in registry:
        return
    with pytest.raises(UnknownNameError) as info:
        registry.get(query)
    err = info.value
    assert isinstance(err, ValueError) and err.kind == "gadget" and err.name == query
    message = str(err)
    assert message.startswith(f"unknown gadget {query!r}.")
    assert message.endswith("Known gadgets: " + ", ".join(names))
    # the suggestion is did_you_mean's choice on case-folded names, in its registered spelling
    expected = did_you_mean(query.casefold(), [n.casefold() for n in names])
    assert err.suggestion == suggest(query, names)
    if err.suggestion is None:
        assert expected == "" and "Did you mean" not in message
    else:
        assert expected == f" Did you mean {err.suggestion.casefold()!r}?"
        assert f"Did you mean {err.suggestion!r}?" in message


@settings(max_examples=40, deadline=None)
@given(name=NAME.filter(lambda s: len(s) >= 4), data=st.data())
def test_a_one_letter_typo_in_any_case_is_suggested(name, data):
    index = data.draw(st.integers(0, len(name) - 1))
    typo = data.draw(recased(name[:index] + name[index + 1:]))  # one character dropped
    assert suggest(typo, [name]) == name


def test_decorator_form_check_and_unregister():
    def only_classes(name, obj):
        if not isinstance(obj, type):
            raise TypeError(f"{name}: expected a class")

    registry: Registry[type] = Registry("thing", check=only_classes)

    @registry.register("Alpha")
    class Alpha:
        pass

    assert registry.get("ALPHA") is Alpha and registry.find("alpha") is Alpha
    assert registry.find("beta") is None and registry.items() == [("Alpha", Alpha)]
    with pytest.raises(TypeError, match="expected a class"):
        registry.register("beta", 3)
    with pytest.raises(TypeError, match="non-empty string"):
        registry.register("", Alpha)
    with pytest.raises(UnknownNameError, match=r"unknown thing 3\. Known things: Alpha"):
        registry.get(3)  # type: ignore[arg-type]
    assert registry.unregister("alpha") is Alpha and "Alpha" not in registry
