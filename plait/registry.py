"""The tables of models and data sources: ``model.name`` and ``data.name`` are looked up here.

A model or data source registers itself in its own file, with one decorator on its builder::

    @register_model("gpt", task="lm", check=check_gpt)
    def build_gpt(cfg: Config) -> PlaitModel: ...          # on torch's current default device

    @register_data("stdlib_text", tasks=("lm",), vocab_size=256)
    def build_text(cfg: Config, model: PlaitModel) -> StepData: ...

Config validation, ``build_model`` / ``build_data``, the pre-launch checks and the planner read
these tables; no other file lists the names. Adding one to plait is its file plus an import
line in ``plait/models/__init__.py`` or ``plait/data/__init__.py`` (importing registers it).

An installed package registers under the entry-point groups ``plait.models`` / ``plait.data``
(the entry point names the module that registers the name): ``model.name=toy`` then works with
nothing on the Python path. From outside plait, also name it ``module:name`` (``model.name=my_models:toy``): the lookup imports
``module`` (from the Python path, e.g. ``PYTHONPATH``), whose decorators register ``name``. So
every process that reads the config (the launcher, each rank, ``plait export``) finds it the
same way, with nothing to install.

Plait's own entries load on the first lookup (``builtins``: importing ``plait.models`` /
``plait.data``), so this module and :mod:`plait.config` import neither torch nor a model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from plait.errors import ConfigError, PlaitError, did_you_mean

#: what a model computes, so which data fits it: the batch keys are ``input`` and ``target``
#: for both (token ids for lm; features or images and a class index for classification)
TASKS = {"lm": "token data", "classification": "images/vectors"}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., Any]  # (cfg) -> PlaitModel, built on torch's current default device
    task: str  # "lm" | "classification": which data sources fit (DataEntry.tasks)
    check: Callable[..., None] | None = None  # (cfg) -> None: shape checks, no process group


@dataclass(frozen=True)
class DataEntry:
    name: str
    build: Callable[..., Any]  # (cfg, model) -> StepData
    tasks: tuple[str, ...]  # model tasks it serves
    vocab_size: int | None = None  # token ids are < this (None: the model's vocabulary)
    in_features: int | None = None  # inputs per sample (None: shaped to the model)
    vocab_of: Callable[..., int | None] | None = None  # (cfg) -> vocabulary the files hold


E = TypeVar("E", ModelEntry, DataEntry)


class Registry(Generic[E]):
    """Name -> entry for one config key; names are kept in registration order."""

    def __init__(self, key: str, builtins: str, group: str):
        self.key, self.builtins, self.group = key, builtins, group
        self._entries: dict[str, E] = {}
        self._loaded = False

    def add(self, entry: E) -> None:
        old = self._entries.get(entry.name)
        if old is not None and _where(old.build) != _where(entry.build):
            raise PlaitError(
                f"{self.key}: {entry.name!r} is registered twice ({_where(old.build)} and "
                f"{_where(entry.build)}); give one of them another name"
            )
        self._entries[entry.name] = entry  # the same builder again: a module re-imported

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.builtins)  # plait's own entries register themselves

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __iter__(self) -> Iterator[E]:
        self._load()
        return iter(list(self._entries.values()))

    def get(self, name: str) -> E:
        """The entry of ``name`` or ``module:name``; ConfigError naming the key otherwise."""
        self._load()
        if name in self._entries:
            return self._entries[name]
        if ":" not in name and self._from_entry_point(name):
            return self._entries[name]
        if ":" not in name:
            raise ConfigError(
                f"{self.key}: {name!r} is not registered{did_you_mean(name, self._entries)}; "
                f"allowed: {', '.join(self._entries)}, or module:name for one registered "
                "in a module of yours"
            )
        module, _, short = name.partition(":")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise  # the module exists but one of its own imports is missing
            raise ConfigError(
                f"{self.key}: {name!r}: no module {module!r} on the Python path; add its "
                "folder to PYTHONPATH"
            ) from None
        if short not in self._entries:
            raise ConfigError(
                f"{self.key}: {name!r}: importing {module!r} registered no {short!r}"
                f"{did_you_mean(short, self._entries)}; registered: {', '.join(self._entries)}"
            )
        return self._entries[short]

    def _from_entry_point(self, name: str) -> bool:
        """An installed package's entry point ``name`` in :attr:`group` (pyproject:
        ``[project.entry-points."plait.models"] toy = "my_pkg.models"``): loading it imports
        the module, whose decorator registers ``name``."""
        # deferred: entry points are scanned only for an unknown name
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            if ep.name == name:
                ep.load()
                if name not in self._entries:
                    raise ConfigError(
                        f"{self.key}: {name!r}: the entry point {ep.value!r} of group "
                        f"{self.group!r} registered no {name!r}; its module must register it"
                    )
                return True
        return False


def _where(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


MODELS: Registry[ModelEntry] = Registry("model.name", "plait.models", group="plait.models")
DATA: Registry[DataEntry] = Registry("data.name", "plait.data", group="plait.data")


def register_model(
    name: str, *, task: str, check: Callable[..., None] | None = None
) -> Callable[[Callable], Callable]:
    """Decorator: ``build(cfg) -> PlaitModel`` becomes ``model.name=name``. ``task`` says which
    data fits (see :data:`TASKS`); ``check(cfg)`` refuses impossible shapes before launch."""

    def deco(build: Callable) -> Callable:
        MODELS.add(ModelEntry(name, build, task, check))
        return build

    return deco


def register_data(
    name: str,
    *,
    tasks: tuple[str, ...],
    vocab_size: int | None = None,
    in_features: int | None = None,
    vocab_of: Callable[..., int | None] | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator: ``build(cfg, model) -> StepData`` becomes ``data.name=name``, for models of
    ``tasks``; ``vocab_size`` / ``in_features``: fixed sizes the model must take; ``vocab_of(cfg)``:
    a vocabulary that depends on the config (token files recording theirs)."""

    def deco(build: Callable) -> Callable:
        DATA.add(DataEntry(name, build, tuple(tasks), vocab_size, in_features, vocab_of))
        return build

    return deco


def data_vocab_size(cfg: Any) -> int | None:
    """The vocabulary the configured data's token ids come from (None: the model's own)."""
    entry = DATA.get(cfg.data.name)
    return entry.vocab_of(cfg) if entry.vocab_of is not None else entry.vocab_size


def fitting_data(task: str) -> list[str]:
    """Data sources that serve models of ``task``, in registration order."""
    return [e.name for e in DATA if task in e.tasks]
