"""One registry style for everything looked up by name: a dict behind a decorator.

Algorithms, denoisers, samplers, noise schedules, experts, state access, envs and presets all
live in a :class:`Registry`, so they follow the same rules:

* **Case.** Lookup ignores case (``"DDPM"``, ``"ddpm"`` and ``"Ddpm"`` find the same sampler).
  The spelling used when registering is the canonical name: :meth:`Registry.names` lists it
  and :meth:`Registry.canonical` returns it.
* **Duplicates.** A name (in any case) is registered once. Registering the same object again
  under it is allowed (re-importing a module); another object under a taken name is refused.
* **Misses.** An unknown name raises :class:`UnknownNameError` (a ``ValueError``) that names
  the kind, the name given, the closest known name ("Did you mean ...?") and every known name.

Usage::

    DENOISERS = Registry("denoiser")

    @DENOISERS.register("unet")
    class ConditionalUnet1D(Denoiser): ...

    DENOISERS.register("mlp", MLPDenoiser)    # direct call
    DENOISERS.get("UNet")                     # -> ConditionalUnet1D
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

__all__ = ["DuplicateNameError", "Registry", "UnknownNameError", "suggest"]

T = TypeVar("T")
R = TypeVar("R")

#: similarity (difflib ratio, on case-folded names) above which a known name is suggested; the
#: cutoff of :func:`rlox_dp.config.did_you_mean`.
SUGGEST_CUTOFF = 0.6


class UnknownNameError(ValueError):
    """A name that is not registered; the message names the kind, the name and the known names.

    Attributes:
        kind: what was looked up (``"algorithm"``, ``"sampler"``, ...).
        name: the name given.
        known: the canonical names registered at the time of the lookup.
        suggestion: the closest known name, or None.
    """

    def __init__(self, kind: str, name: object, known: list[str], suggestion: str | None) -> None:
        self.kind, self.name, self.known, self.suggestion = kind, name, known, suggestion
        hint = f" Did you mean {suggestion!r}?" if suggestion is not None else ""
        listed = ", ".join(known) if known else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kind}s: {listed}")


class DuplicateNameError(ValueError):
    """A name (in any case) already registered for another object."""


def suggest(name: str, known: list[str]) -> str | None:
    """The known name closest to ``name``, ignoring case, or None when none is close.

    The rule of :func:`rlox_dp.config.did_you_mean` (difflib, cutoff 0.6) applied to case-folded
    names; the suggestion is returned in its registered spelling.
    """
    folded = {k.casefold(): k for k in known}
    close = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=SUGGEST_CUTOFF)
    return folded[close[0]] if close else None


class Registry(Generic[T]):
    """Name -> object, case-insensitive, with did-you-mean on a miss (module docstring).

    Args:
        kind: what the registry holds, singular (``"sampler"``); used in error messages.
        check: optional ``(name, obj) -> None`` run before registering (raises on a bad object,
            e.g. a class that is not an ``Algorithm`` subclass).
    """

    def __init__(self, kind: str, check: Callable[[str, Any], None] | None = None) -> None:
        self.kind = kind
        self._check = check
        self._entries: dict[str, tuple[str, T]] = {}  # casefolded name -> (canonical name, object)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"

    @staticmethod
    def _key(name: str) -> str:
        return name.casefold()

    @overload
    def register(self, name: str) -> Callable[[R], R]: ...

    @overload
    def register(self, name: str, obj: R) -> R: ...

    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does.

        Raises:
            TypeError: ``name`` is not a non-empty string (or ``check`` refuses ``obj``).
            DuplicateNameError: ``name`` (in any case) holds another object.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if obj is None:
            return lambda target: self.register(name, target)
        if self._check is not None:
            self._check(name, obj)
        key = self._key(name)
        if key in self._entries:
            taken, current = self._entries[key]
            if current is obj:
                return obj
            raise DuplicateNameError(
                f"{self.kind} name {name!r} is already registered"
                f"{f' (as {taken!r})' if taken != name else ''} by {current!r}"
            )
        self._entries[key] = (name, obj)
        return obj

    def unregister(self, name: str) -> T:
        """Remove ``name`` (any case) and return its object (for tests and plugins)."""
        key = self._key(self.canonical(name))
        return self._entries.pop(key)[1]

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name``.

        Raises:
            UnknownNameError: ``name`` is not registered (or not a string).
        """
        if isinstance(name, str) and self._key(name) in self._entries:
            return self._entries[self._key(name)][0]
        known = self.names()
        raise UnknownNameError(
            self.kind, name, known, suggest(name, known) if isinstance(name, str) else None
        )

    def get(self, name: str) -> T:
        """The object registered under ``name`` (any case).

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists the known names.
        """
        return self._entries[self._key(self.canonical(name))][1]

    def find(self, name: str) -> T | None:
        """The object registered under ``name`` (any case), or None."""
        entry = self._entries.get(self._key(name)) if isinstance(name, str) else None
        return entry[1] if entry is not None else None

    def names(self) -> list[str]:
        """Canonical names, in registration order."""
        return [name for name, _ in self._entries.values()]

    def items(self) -> list[tuple[str, T]]:
        """``(canonical name, object)`` pairs, in registration order."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
