"""Functions registered by name, so that a config key can name one of them.

Rewards, advantage scales and loss aggregations are each a Registry: a decorator adds a
function under a name (a second, different function under the same name is an error,
so two modules cannot silently replace each other's), ``names()`` lists what a config
may say, and looking up an unknown name is a KeyError that lists the known ones.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # what one entry is, for messages ("reward", "loss aggregation")
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``fn`` under ``name``; registering the same function again is a no-op."""

        def decorator(fn: T) -> T:
            if name in self._entries and self._entries[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return decorator

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {list(self.names())}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def pop(self, name: str, default=None):
        """Remove ``name`` (e.g. an entry a test registered for itself); ``default`` when absent."""
        return self._entries.pop(name, default)
