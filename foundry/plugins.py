"""The plugin manager: finds plugins, collects what each contributes, survives broken ones.

Plugins come from the ``foundry`` entry-point group (built-in modalities use it too).
Environment switches:

- ``FOUNDRY_PLUGINS=protein,text`` loads only the named entry points;
- ``FOUNDRY_DISABLE_PLUGIN_AUTOLOAD=1`` loads none (register plugins by hand, e.g. in tests).

A plugin that fails to import or whose hook raises is recorded in ``failures`` and reported by
``foundry plugins``; every other plugin keeps working.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import FoundryError
from .modality import Modality
from .readers import Reader
from .registry import Registry

ENTRY_POINT_GROUP = "foundry"


@dataclass
class PluginInfo:
    name: str  # entry-point name, or the name given to ``register_plugin``
    package: str  # distribution that provides it
    version: str
    contributes: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PluginFailure:
    name: str
    package: str
    error: str  # one line: exception type and message
    detail: str  # full traceback, for --verbose


class PluginManager:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("foundry")
        self.pm.add_hookspecs(hookspecs)
        self.modalities: Registry[Modality] = Registry("modality")
        self.tokenizers: Registry[type] = Registry("tokenizer kind")
        self.readers: Registry[Reader] = Registry("reader")
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []

    # -- loading -----------------------------------------------------------------------------

    def load_entry_points(self) -> None:
        if os.environ.get("FOUNDRY_DISABLE_PLUGIN_AUTOLOAD"):
            return
        allow = _allow_list()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if allow is not None and ep.name not in allow:
                continue
            if ep.name in self.plugins:
                continue  # the same entry point seen twice (e.g. editable + regular install)
            package, version = _distribution(ep)
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the others
                self._fail(ep.name, package, exc)
                continue
            self.register_plugin(module, ep.name, package=package, version=version)

    def register_plugin(self, plugin: Any, name: str, package: str = "", version: str = "") -> PluginInfo | None:
        """Register one plugin and run its contribution hooks. Returns None if they failed."""
        self.pm.register(plugin, name=name)
        info = PluginInfo(name=name, package=package or name, version=version or "")
        try:
            self._collect(plugin, info)
        except Exception as exc:  # noqa: BLE001
            self._remove_contributions(info)
            self.pm.unregister(plugin)
            self._fail(name, info.package, exc)
            return None
        self.plugins[name] = info
        return info

    def unregister_plugin(self, name: str) -> None:
        info = self.plugins.pop(name, None)
        if info is not None:
            self._remove_contributions(info)
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)

    def _collect(self, plugin: Any, info: PluginInfo) -> None:
        def adder(kind: str, registry: Registry, key: Callable[[Any], str]):
            def register(*args):
                item = args[-1]
                name = args[0] if len(args) == 2 else key(item)
                registry.register(name, item, owner=f"{info.name} ({info.package})")
                info.contributes.setdefault(kind, []).append(name)
            return register

        calls = {
            "register_modalities": adder("modalities", self.modalities, lambda m: m.name),
            "register_tokenizers": adder("tokenizers", self.tokenizers, lambda c: c.kind),
            "register_readers": adder("readers", self.readers, lambda r: r.name),
        }
        for hook_name, register in calls.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(register=register)

    def _remove_contributions(self, info: PluginInfo) -> None:
        registries = {"modalities": self.modalities, "tokenizers": self.tokenizers, "readers": self.readers}
        for kind, names in info.contributes.items():
            if kind in registries:
                for n in names:
                    registries[kind].unregister(n)

    def _fail(self, name: str, package: str, exc: BaseException) -> None:
        one_line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        detail = "".join(traceback.format_exception(exc))
        self.failures.append(PluginFailure(name, package, one_line, detail))
        print(f"foundry: plugin {name!r} ({package}) failed to load and is skipped: {one_line}", file=sys.stderr)

    # -- CLI ---------------------------------------------------------------------------------

    def add_commands(self, cli) -> None:
        """Let every plugin add its commands to ``cli``; a failing plugin is reported and skipped."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            name = self.pm.get_name(impl.plugin)
            before = set(cli.commands)
            try:
                impl.function(cli=cli)
            except Exception as exc:  # noqa: BLE001
                for added in set(cli.commands) - before:
                    cli.commands.pop(added)
                info = self.plugins.get(name)
                self._fail(name, info.package if info else name, exc)
                continue
            if name in self.plugins:
                self.plugins[name].contributes.setdefault("commands", []).extend(sorted(set(cli.commands) - before))

    # -- lookups -----------------------------------------------------------------------------

    def modality(self, name: str) -> Modality:
        return self.modalities.get(name)

    def tokenizer_class(self, kind: str) -> type:
        return self.tokenizers.get(kind)

    def reader_objects(self, names) -> list[Reader]:
        return [self.readers.get(n) for n in names]


def _allow_list() -> set[str] | None:
    raw = os.environ.get("FOUNDRY_PLUGINS")
    if raw is None or not raw.strip():
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _distribution(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.module.split(".")[0], ""
    return dist.metadata["Name"], dist.version


_manager: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _manager
    if _manager is None:
        manager = PluginManager()
        manager.load_entry_points()
        _manager = manager
    return _manager


def reset_manager() -> None:
    """Forget the loaded plugins (tests use this after changing the environment switches)."""
    global _manager
    _manager = None


def load_tokenizer(kind: str, directory) -> Any:
    """Restore a saved tokenizer of the given kind through the registry."""
    try:
        cls = get_manager().tokenizer_class(kind)
    except FoundryError as exc:
        raise FoundryError(f"{directory}: {exc} (is the plugin that provides it installed?)") from None
    return cls.load(directory)
