"""A small name -> factory registry, in the manner of timm's ``@register_model``.

Every rule and op file ends with a decorated factory; a package ``__init__`` imports its modules
by name so that registration order is predictable. Registering a name twice is an error, and
looking up an unknown name raises :class:`~bionas.errors.UnknownNameError` listing what exists.
A registered class gets its registry name as its ``name`` attribute, so the name is written once.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from bionas.errors import BionasError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to objects (classes or factory functions)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``."""
        if name != name.lower() or not name:
            raise ValueError(f"{self.kind} names are non-empty and lower-case, got {name!r}")

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            if isinstance(obj, type) and hasattr(obj, "name"):
                obj.name = name  # the one place the name is written
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests and plug-ins that register temporarily)."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class ComposingRegistry(Registry[T]):
    """A registry whose names may carry ``+`` parts (``usf+bcm_lr``, ``sep_conv_3x3+zscore``):
    ``get`` hands such a name to :meth:`compose`, and ``in`` says whether it composes."""

    def compose(self, name: str) -> T:  # pragma: no cover - abstract
        raise NotImplementedError

    def get(self, name: str) -> T:
        if not isinstance(name, str) or "+" not in name:
            return super().get(name)
        return self.compose(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and "+" in name:
            try:
                self.compose(name)
            except (BionasError, ValueError):
                return False
            return True
        return super().__contains__(name)
