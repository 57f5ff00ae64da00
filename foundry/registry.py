"""Named registries with clear errors: unknown names list the known ones, duplicates name both
owners, and tests can unregister what they registered."""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from .errors import FoundryError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what  # e.g. "modality", shown in error messages
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def register(self, name: str, item: T, owner: str = "?") -> None:
        if name in self._items:
            raise FoundryError(duplicate_message(self.what, name, self._owners[name], owner))
        self._items[name] = item
        self._owners[name] = owner

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)
        self._owners.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise FoundryError(unknown_name_message(self.what, name, self._items)) from None

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def unknown_name_message(what: str, name: str, known) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Known: {', '.join(known) or '(none)'}"


def duplicate_message(what: str, name: str, first: str, second: str) -> str:
    """The first registration keeps a name; the message names both owners (plugin and package)."""
    return f"{what} {name!r} is registered twice: by {first} and by {second}; the first keeps it, the second is refused"
