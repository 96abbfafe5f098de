"""Self-validating dataclass configs: type checks, ``Literal`` choices, aliases, did-you-mean.

Every algorithm config is a dataclass deriving from :class:`Config`. Building one from a dict
(``Config.from_dict``) resolves documented aliases (e.g. rlox's ``n_diffusion_steps`` for our
``num_train_timesteps``), rejects unknown keys with a suggestion, coerces JSON lists to tuples,
and checks every field against its type annotation. Subclasses add cross-field rules in
``validate()``. All failures raise :class:`ConfigError`, whose message names the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

__all__ = ["Config", "ConfigError", "did_you_mean", "split_by_owner"]

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field, the expectation and the value."""


def did_you_mean(name: str, candidates: typing.Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple of {_type_name(args[0])}"
        return "tuple(" + ", ".join(_type_name(a) for a in args) + ")"
    if origin in (dict, Mapping):
        return "dict"
    return getattr(tp, "__name__", str(tp))


def _coerce(field: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; return it (lists become tuples, ints floats).

    Raises:
        ConfigError: naming ``field`` when the value does not fit.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(field, value, arg)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:  # ``X | None`` given something else: X's own message
            raise errors[0]
        raise ConfigError(f"config field {field!r}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        if isinstance(value, str):  # case-insensitive match, e.g. "DDIM" for "ddim"
            for choice in choices:
                if isinstance(choice, str) and choice.lower() == value.lower():
                    return choice
        raise ConfigError(
            f"config field {field!r}: expected one of {', '.join(map(repr, choices))}, "
            f"got {value!r}.{did_you_mean(str(value), map(str, choices))}"
        )
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {field!r}: expected {_type_name(tp)}, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if len(value) == 0:
                raise ConfigError(f"config field {field!r}: expected a non-empty tuple, got {value!r}")
            return tuple(_coerce(f"{field}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"config field {field!r}: expected {len(args)} values ({_type_name(tp)}), got {value!r}"
            )
        return tuple(_coerce(f"{field}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config field {field!r}: expected a dict, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config field {field!r}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config field {field!r}: expected an int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field {field!r}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"config field {field!r}: expected a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config field {field!r}: expected a string, got {value!r}")
        return value
    return value


@dataclasses.dataclass
class Config:
    """Base class of all configs: validates types on construction; see the module docstring."""

    #: alias -> canonical field name (documented equivalents, e.g. rlox's names).
    ALIASES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; subclasses extend it and raise :class:`ConfigError`."""

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """Names of all fields, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def resolve_aliases(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Map aliases to canonical names; reject unknown keys and alias/field duplicates."""
        names = set(cls.field_names())
        out: dict[str, Any] = {}
        for key, value in values.items():
            canonical = cls.ALIASES.get(key, key)
            if canonical not in names:
                known = sorted(names | set(cls.ALIASES))
                raise ConfigError(
                    f"unknown config key {key!r} for {cls.__name__}.{did_you_mean(key, known)} "
                    f"Known keys: {', '.join(sorted(names))}"
                )
            if canonical in out:
                raise ConfigError(
                    f"config field {canonical!r} given twice (directly and through the alias {key!r})"
                )
            out[canonical] = value
        return out

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None = None, **overrides: Any) -> C:
        """Build a validated config from a dict (aliases allowed) plus keyword overrides."""
        merged = dict(values or {})
        merged.update(overrides)
        return cls(**cls.resolve_aliases(merged))

    def replace(self: C, **changes: Any) -> C:
        """Return a validated copy with ``changes`` applied (aliases allowed)."""
        current = self.to_dict()
        current.update(self.resolve_aliases(changes))
        return type(self)(**current)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict of all fields (tuples become lists on JSON dump)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def split_by_owner(values: Mapping[str, Any], owners: typing.Sequence[type[Config]]) -> list[dict[str, Any]]:
    """Split a flat dict between configs: each key goes, under its canonical name, to the one config
    class in ``owners`` that has it as a field or an alias (the first such class wins).

    Returns:
        one dict per class of ``owners``, in order (empty where it owns no key).

    Raises:
        ConfigError: a key no class knows (naming it, with the closest known key and the known
            keys), or a field given twice (directly and through an alias).
    """
    parts: list[dict[str, Any]] = [{} for _ in owners]
    for key, value in values.items():
        for part, cls in zip(parts, owners, strict=True):
            if key in cls.ALIASES or key in cls.field_names():
                canonical = cls.ALIASES.get(key, key)
                if canonical in part:
                    raise ConfigError(
                        f"config field {canonical!r} given twice (directly and through the alias {key!r})"
                    )
                part[canonical] = value
                break
        else:
            names = sorted({n for cls in owners for n in cls.field_names()})
            known = sorted(set(names) | {a for cls in owners for a in cls.ALIASES})
            raise ConfigError(
                f"unknown config key {key!r} for {' / '.join(cls.__name__ for cls in owners)}."
                f"{did_you_mean(key, known)} Known keys: {', '.join(names)}"
            )
    return parts
