"""Plugin registries backed by entry points, loaded lazily.

Built-in plugins register exactly as a third party would, in pyproject.toml::

    [project.entry-points."recforge.recommenders"]
    popularity = "recforge_plugins.recommenders.popularity:Popularity"

A plugin whose module fails to import for an unrelated reason gives a warning
and is skipped; one that lacks an optional dependency raises ``MissingExtra``
naming the extra to install when someone asks for it by name. When a plugin
loads, its class is checked against the registry's protocol
(recforge.protocols): every method and attribute the protocol lists must be
there, or a ``RecforgeError`` names what is missing.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from recforge.errors import MissingExtra, RecforgeError
from recforge.protocols import Encoder, Explainer, Recommender, Reranker

log = logging.getLogger(__name__)
T = TypeVar("T")

# Which extra provides a module a plugin may import (for install hints).
EXTRA_OF_MODULE = {
    "torch": "torch",
    "gensim": "text",
    "sentence_transformers": "text",
    "transformers": "text",
    "implicit": "models",
    "lightgbm": "rerank",
    "vaderSentiment": "text",
}


class Registry(Generic[T]):
    """Name -> plugin class for one entry-point group, checked against ``protocol`` when loaded."""

    def __init__(self, group: str, protocol: type | None = None) -> None:
        self.group = group
        self.protocol = protocol
        self._extra: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def register(self, name: str, target: str | Any) -> None:
        """Register by dotted path ``module:attr`` (lazy, checked when loaded) or by class (checked now)."""
        if isinstance(target, str):
            self._extra[name] = target
        else:
            self._check(target, name)
            self._loaded[name] = target

    def names(self) -> list[str]:
        return sorted(set(self._entry_points()) | set(self._extra) | set(self._loaded))

    def view(self) -> Mapping[str, str]:
        """Read-only mapping of name -> where the plugin comes from."""
        sources = {name: ep.value for name, ep in self._entry_points().items()}
        sources.update(self._extra)
        sources.update({name: f"{obj.__module__}:{obj.__qualname__}" for name, obj in self._loaded.items()})
        return MappingProxyType(dict(sorted(sources.items())))

    def get(self, name: str) -> Any:
        """The plugin class called ``name``; errors name the extra to install."""
        if name in self._loaded:
            return self._loaded[name]
        source = self._extra.get(name)
        if source is None:
            ep = self._entry_points().get(name)
            if ep is None:
                known = ", ".join(self.names()) or "none"
                raise RecforgeError(f"unknown {self.group.split('.')[-1][:-1]} plugin '{name}' (registered: {known})")
            source = ep.value
        obj = _load(source, name)
        self._check(obj, name)
        self._loaded[name] = obj
        return obj

    def _check(self, cls: Any, name: str) -> None:
        """Raise ``RecforgeError`` naming the protocol members ``cls`` lacks."""
        if self.protocol is None:
            return
        missing = missing_members(cls, self.protocol)
        if missing:
            raise RecforgeError(
                f"plugin '{name}' ({getattr(cls, '__module__', '?')}:{getattr(cls, '__qualname__', cls)}) does not "
                f"implement {self.protocol.__name__}: missing {', '.join(missing)}"
            )

    def available(self) -> dict[str, Any]:
        """Every plugin that loads; broken ones give a warning and are skipped."""
        plugins = {}
        for name in self.names():
            try:
                plugins[name] = self.get(name)
            except MissingExtra as exc:
                log.info("%s", exc)
            except Exception as exc:  # a broken third-party plugin must not break the rest
                warnings.warn(f"plugin '{name}' in {self.group} failed to load: {exc}", stacklevel=2)
        return plugins

    def create(self, name: str, **options: Any) -> T:
        cls = self.get(name)
        try:
            return cls(**options)
        except TypeError as exc:
            raise RecforgeError(f"plugin '{name}': bad options {sorted(options)}: {exc}") from None


def _load(source: str, name: str) -> Any:
    module_name, _, attr = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in EXTRA_OF_MODULE:
            raise MissingExtra(
                f"plugin '{name}' needs '{missing}': pip install 'recforge[{EXTRA_OF_MODULE[missing]}]'"
            ) from exc
        raise
    obj = module
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def protocol_members(protocol: type) -> dict[str, bool]:
    """Name -> whether it is a method, for every member ``protocol`` (and its base protocols) lists."""
    members: dict[str, bool] = {}
    for base in reversed(protocol.__mro__):
        if base in (object, Generic) or base.__name__ == "Protocol" or not getattr(base, "_is_protocol", False):
            continue
        for attr in base.__dict__.get("__annotations__", {}):
            members.setdefault(attr, False)
        for attr, value in base.__dict__.items():
            if attr.startswith("_"):
                continue
            members[attr] = callable(value) or isinstance(value, (classmethod, staticmethod))
    return members


def missing_members(cls: Any, protocol: type) -> list[str]:
    """The members of ``protocol`` that class ``cls`` lacks: a method as ``name()``, an attribute as ``name``.

    An attribute counts when the class defines it or declares it with an
    annotation (it may be set in ``__init__``); a method must be callable.
    """
    if not inspect.isclass(cls):
        return [f"(a class; got {type(cls).__name__})"]
    annotated = {attr for klass in cls.__mro__ for attr in klass.__dict__.get("__annotations__", {})}
    missing = []
    for attr, is_method in protocol_members(protocol).items():
        if is_method:
            if not callable(getattr(cls, attr, None)):
                missing.append(f"{attr}()")
        elif not hasattr(cls, attr) and attr not in annotated:
            missing.append(attr)
    return missing


encoders: Registry = Registry("recforge.encoders", Encoder)
recommenders: Registry = Registry("recforge.recommenders", Recommender)
rerankers: Registry = Registry("recforge.rerankers", Reranker)
explainers: Registry = Registry("recforge.explainers", Explainer)

ALL = {"encoders": encoders, "recommenders": recommenders, "rerankers": rerankers, "explainers": explainers}
