"""What may be built from a name, and what data loaded from a file may hold.

The project's YAML files and the command line name classes with Hydra's ``_target_``: that is
the user's own choice, like any line of Python they run. Data loaded from a file is not: a
checkpoint's hyper-parameters, an exported model's ``config.json`` or a run folder's
``resolved_config.yaml`` may come from anyone, and loading them must never run code. Hydra's
``instantiate`` would import and call whatever such a file names (``builtins.open``,
``shutil.copyfile`` ... pass its blocklist), so nothing loaded ever reaches it:

- :func:`check_plain` refuses anything but plain values (mappings with string keys, lists,
  strings, numbers, booleans, None) and any Hydra key (``_target_``, ``_args_`` ...), except
  the optimiser and schedule of a model, whose ``_target_`` must name a ``torch.optim``
  optimiser (:func:`optimizer_class`) or one of the project's schedules (:func:`scheduler_function`);
- objects are built by calling the project's own classes and functions directly
  (:func:`datamodule_class`, :func:`build_optimizer`, :func:`build_scheduler`).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Keys Hydra's instantiate acts on.
HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})
# The keys of a model's hyper-parameters that name a callable (checked against the allowlists).
CALLABLE_KEYS = ("optimizer", "scheduler")
# The project's schedules, by the names configs use.
SCHEDULES = ("empathy.models.module.linear_schedule",)
# The project's data module, by the names configs use (the joint model's data module of earlier
# versions is the same data module now).
DATAMODULES = {
    "empathy.data.datamodule.EpitomeDataModule": ("empathy.data.datamodule", "EpitomeDataModule"),
    "empathy.data.joint.JointEpitomeDataModule": ("empathy.data.datamodule", "EpitomeDataModule"),
}


class UnsafeConfigError(ValueError):
    """Data loaded from a file holds something other than plain values, or names a callable
    that is not on the allowlist."""


def check_plain(value: Any, source: str, *, callables: Sequence[str] = (), _path: str = "") -> None:
    """Raise :class:`UnsafeConfigError` (naming ``source`` and the key) unless ``value`` is made
    of plain values only. Top-level keys in ``callables`` may hold an allowlisted optimiser or
    schedule (``{_target_: torch.optim.AdamW, _partial_: true, lr: ...}``)."""
    where = _path or "(top level)"
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{source}: {where}: key {key!r} is not a string")
            path = f"{_path}.{key}" if _path else key
            if key in HYDRA_KEYS:
                raise UnsafeConfigError(
                    f"{source}: {path}: loaded data may not hold Hydra's {key} (it would build objects from "
                    "a file); only the project's own configs name classes"
                )
            if not _path and key in callables and item is not None:
                check_callable(item, f"{source}: {path}", kind=key)
                continue
            check_plain(item, source, _path=path)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, source, _path=f"{_path}[{i}]")
        return
    raise UnsafeConfigError(f"{source}: {where}: {type(value).__name__} is not a plain value")


def check_callable(config: Any, where: str, kind: str) -> None:
    """An optimiser or schedule config: an allowlisted ``_target_``, ``_partial_: true`` and
    plain keyword arguments."""
    if not isinstance(config, Mapping) or "_target_" not in config:
        raise UnsafeConfigError(f"{where}: expected a mapping with _target_, got {config!r:.80}")
    extra = sorted(set(config) & HYDRA_KEYS - {"_target_", "_partial_"})
    if extra or config.get("_partial_", True) is not True:
        raise UnsafeConfigError(f"{where}: only _target_ and _partial_: true may be set, got {sorted(config)}")
    resolve = optimizer_class if kind == "optimizer" else scheduler_function
    resolve(config["_target_"], where)
    check_plain({k: v for k, v in config.items() if k not in ("_target_", "_partial_")}, where)


def _import(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def optimizer_class(target: str, where: str = "optimizer") -> type:
    """A ``torch.optim`` optimiser class by its dotted name (``torch.optim.AdamW``)."""
    import torch

    module, _, name = str(target).rpartition(".")
    cls = getattr(torch.optim, name, None) if module == "torch.optim" else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise UnsafeConfigError(
            f"{where}: _target_ {target!r} is not an optimiser of torch.optim (e.g. torch.optim.AdamW)"
        )
    return cls


def scheduler_function(target: str, where: str = "scheduler") -> Callable:
    """One of the project's schedules (:data:`SCHEDULES`: called with the optimiser and the
    number of training steps) by its dotted name."""
    if target not in SCHEDULES:
        raise UnsafeConfigError(
            f"{where}: _target_ {target!r} is not one of the project's schedules ({', '.join(SCHEDULES)})"
        )
    module, _, name = str(target).rpartition(".")
    return _import(module, name)


def _partial(config: Mapping[str, Any], resolve: Callable[[str, str], Callable], where: str) -> functools.partial:
    check_callable(config, where, kind="optimizer" if resolve is optimizer_class else "scheduler")
    kwargs = {k: v for k, v in config.items() if k not in ("_target_", "_partial_")}
    return functools.partial(resolve(config["_target_"], where), **kwargs)


def build_optimizer(config: Mapping[str, Any], params: Any) -> Any:
    """``config`` (``model.optimizer``) applied to ``params``."""
    return _partial(config, optimizer_class, "model.optimizer")(params)


def build_scheduler(config: Mapping[str, Any], optimizer: Any, total_steps: int) -> Any:
    """``config`` (``model.scheduler``) applied to ``optimizer`` over ``total_steps``."""
    return _partial(config, scheduler_function, "model.scheduler")(optimizer, total_steps)


def datamodule_class(target: str, where: str = "data._target_") -> type:
    """One of the project's data modules (:data:`DATAMODULES`) by its dotted name."""
    if target not in DATAMODULES:
        raise UnsafeConfigError(
            f"{where}: {target!r} is not one of the project's data modules ({', '.join(DATAMODULES)})"
        )
    return _import(*DATAMODULES[target])
