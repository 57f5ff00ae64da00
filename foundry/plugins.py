"""The plugin manager: finds plugins, collects what each contributes, survives broken ones.

Plugins come from the ``foundry`` entry-point group. The built-in modalities use it too, and
load first (pytest's rule): the entry points of the ``foundry`` distribution itself, then every
other package's in name order. A name is kept by whoever registered it first, so a third-party
plugin that claims a taken name (a modality, tokenizer kind, reader, preset, command, or its own
entry-point name) is refused as a whole, with both packages named, and the built-in keeps working.

Environment switches:

- ``FOUNDRY_PLUGINS=protein,text`` loads only the named entry points. Unset or empty (only
  spaces and commas) means no allow-list: every installed plugin loads. A name that matches no
  installed entry point is reported with the names that exist.
- ``FOUNDRY_DISABLE_PLUGIN_AUTOLOAD=1`` loads none (register plugins by hand, e.g. in tests).
  ``0``, ``false``, ``no``, ``off`` and the empty string leave loading on.

A plugin that fails to import, whose hook raises, or that is refused is recorded in ``failures``
and reported by ``foundry plugins``; every other plugin keeps working.
"""

from __future__ import annotations

import difflib
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
from .components import BUILTIN_OBJECTIVES, BUILTIN_TASKS, component_name
from .presets import BUILTIN_PRESETS, check_preset
from .registry import Registry, duplicate_message

ENTRY_POINT_GROUP = "foundry"
#: the distribution whose entry points are the built-in plugins; they load before any other
BUILTIN_PACKAGE = "foundry"
#: who owns the engine's own presets and root commands in "registered twice" messages
ENGINE_OWNER = "foundry (engine)"

#: contribution hook -> (kind shown by ``foundry plugins``, registry attribute, name of an item
#: passed alone to ``register``). Adding a contribution hook is one line here plus its spec.
CONTRIBUTIONS: dict[str, tuple[str, str, Callable[[Any], str]]] = {
    "register_presets": ("presets", "presets", lambda spec: spec["name"]),
    "register_tokenizers": ("tokenizers", "tokenizers", lambda cls: cls.kind),
    "register_readers": ("readers", "readers", lambda reader: reader.name),
    "register_modalities": ("modalities", "modalities", lambda modality: modality.name),
    "register_objectives": ("objectives", "objectives", component_name),
    "register_tasks": ("tasks", "tasks", component_name),
}


@dataclass
class PluginInfo:
    name: str  # entry-point name, or the name given to ``register_plugin``
    package: str  # distribution that provides it
    version: str
    contributes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages name this plugin: ``protein (foundry)``."""
        return f"{self.name} ({self.package})"


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
        self.presets: Registry[dict] = Registry("model preset")
        for name, spec in BUILTIN_PRESETS.items():
            self.presets.register(name, spec, owner=ENGINE_OWNER)
        #: classes or "module:Class" strings (``foundry.components.resolve``)
        self.objectives: Registry[Any] = Registry("objective")
        self.tasks: Registry[Any] = Registry("fine-tuning task")
        for registry, builtins in ((self.objectives, BUILTIN_OBJECTIVES), (self.tasks, BUILTIN_TASKS)):
            for name, path in builtins.items():
                registry.register(name, path, owner=ENGINE_OWNER)
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        #: entry-point names found installed, and FOUNDRY_PLUGINS entries that matched none of them
        self.installed: list[str] = []
        self.unmatched: list[str] = []

    # -- loading -----------------------------------------------------------------------------

    def load_entry_points(self) -> None:
        if autoload_disabled():
            return
        found = []
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            package, version = _distribution(ep)
            found.append((package != BUILTIN_PACKAGE, ep.name, package, version, ep))
        found.sort(key=lambda row: row[:3])  # built-ins first, then by entry-point name
        self.installed = sorted({row[1] for row in found})
        allow = allow_list()
        if allow is not None:
            self.unmatched = sorted(allow - set(self.installed))
            if self.unmatched:
                print(f"foundry: {unmatched_message(self.unmatched, self.installed)}", file=sys.stderr)
        for _, name, package, version, ep in found:
            if allow is not None and name not in allow:
                continue
            if name in self.plugins and self.plugins[name].package == package:
                continue  # the same entry point seen twice (e.g. editable + regular install)
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the others
                self._fail(name, package, exc)
                continue
            self.register_plugin(module, name, package=package, version=version)

    def register_plugin(self, plugin: Any, name: str, package: str = "", version: str = "") -> PluginInfo | None:
        """Register one plugin and run its contribution hooks. Returns None if it was refused or
        its hooks failed (then ``failures`` says why and nothing it registered is kept)."""
        info = PluginInfo(name=name, package=package or name, version=version or "")
        if name in self.plugins:
            taken = duplicate_message("plugin name", name, self.plugins[name].label, info.label)
            self._fail(name, info.package, FoundryError(taken))
            return None
        try:
            self.pm.register(plugin, name=name)
        except ValueError as exc:  # the same module object under a second name
            self._fail(name, info.package, FoundryError(f"cannot register this plugin object twice: {exc}"))
            return None
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
        for hook_name, (kind, attribute, key) in CONTRIBUTIONS.items():
            register = self._register_callback(info, kind, getattr(self, attribute), key)
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(register=register)

    @staticmethod
    def _register_callback(info: PluginInfo, kind: str, registry: Registry, key: Callable[[Any], str]):
        def register(*args):
            if kind == "presets":  # register(name, spec): plain data, checked without torch
                args = (check_preset(*args),) if len(args) == 2 else args
            if len(args) not in (1, 2):
                raise FoundryError(f"register() for {kind} takes (item) or (name, item), got {len(args)} arguments")
            item = args[-1]
            name = args[0] if len(args) == 2 else key(item)
            registry.register(name, item, owner=info.label)
            info.contributes.setdefault(kind, []).append(name)
        return register

    def _remove_contributions(self, info: PluginInfo) -> None:
        for kind, _attribute, _ in CONTRIBUTIONS.values():
            for name in info.contributes.get(kind, []):
                getattr(self, _attribute).unregister(name)

    def _refuse(self, name: str, exc: BaseException) -> None:
        """Take a registered plugin out again (all it contributed) and report why."""
        info = self.plugins.pop(name, None)
        if info is not None:
            self._remove_contributions(info)
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self._fail(name, info.package if info else name, exc)

    def _fail(self, name: str, package: str, exc: BaseException) -> None:
        one_line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if isinstance(exc, FoundryError):
            one_line = str(exc).splitlines()[0]  # our own messages need no exception type
        detail = "".join(traceback.format_exception(exc))
        self.failures.append(PluginFailure(name, package, one_line, detail))
        print(f"foundry: plugin {name!r} ({package}) failed to load and is skipped: {one_line}", file=sys.stderr)

    # -- CLI ---------------------------------------------------------------------------------

    def add_commands(self, cli) -> None:
        """Let every plugin add its commands to ``cli``, in load order (built-ins first).

        A plugin whose hook raises, or that adds a command under a name already taken (by the
        engine or an earlier plugin), is refused as a whole and reported; the first owner keeps
        the name.
        """
        owners = {name: ENGINE_OWNER for name in cli.commands}
        order = {name: index for index, name in enumerate(self.plugins)}
        impls = sorted(self.pm.hook.register_commands.get_hookimpls(),
                       key=lambda impl: order.get(self.pm.get_name(impl.plugin), len(order)))
        for impl in impls:
            name = self.pm.get_name(impl.plugin)
            info = self.plugins.get(name)
            label = info.label if info else name
            before = dict(cli.commands)
            try:
                impl.function(cli=cli)
                added = sorted(n for n, command in cli.commands.items() if before.get(n) is not command)
                taken = [n for n in added if n in before]
                if taken:
                    raise FoundryError(duplicate_message("command", taken[0], owners[taken[0]], label))
            except Exception as exc:  # noqa: BLE001
                cli.commands.clear()
                cli.commands.update(before)
                self._refuse(name, exc)
                continue
            owners.update({n: label for n in added})
            if info is not None and added:
                info.contributes["commands"] = added

    # -- lookups -----------------------------------------------------------------------------

    def modality(self, name: str) -> Modality:
        return self.modalities.get(name)

    def tokenizer_class(self, kind: str) -> type:
        return self.tokenizers.get(kind)

    def objective_class(self, name: str) -> type:
        from .components import resolve

        return resolve(self.objectives.get(name))

    def task_class(self, name: str) -> type:
        from .components import resolve

        return resolve(self.tasks.get(name))

    def reader_objects(self, names) -> list[Reader]:
        return [self.readers.get(n) for n in names]


def allow_list() -> set[str] | None:
    """Entry-point names in ``FOUNDRY_PLUGINS``; None when unset or empty (everything loads)."""
    raw = os.environ.get("FOUNDRY_PLUGINS")
    names = {p.strip() for p in (raw or "").split(",") if p.strip()}
    return names or None


_FALSE = {"", "0", "false", "no", "off"}


def autoload_disabled() -> bool:
    """``FOUNDRY_DISABLE_PLUGIN_AUTOLOAD`` set to anything but 0/false/no/off/empty."""
    return os.environ.get("FOUNDRY_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() not in _FALSE


def unmatched_message(unmatched: list[str], installed: list[str]) -> str:
    """``FOUNDRY_PLUGINS=protien``: say which entries matched nothing and what is installed."""
    parts = []
    for name in unmatched:
        close = difflib.get_close_matches(name, installed, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"FOUNDRY_PLUGINS names no installed plugin called {', '.join(parts)}; "
            f"installed: {', '.join(installed) or '(none)'}")


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


def set_manager(manager: PluginManager | None) -> PluginManager | None:
    """Make ``manager`` the process-wide one (None: load afresh on next use); returns the old one.
    ``foundry.testing.plugins_registered`` uses this to run the CLI with a test's own plugins."""
    global _manager
    previous, _manager = _manager, manager
    return previous


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
