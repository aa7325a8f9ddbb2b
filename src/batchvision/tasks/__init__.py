"""Tasks, one module each, registered the way torchvision registers models.

``register_task`` is the one way in (a second task of the same name raises), ``get_task``
the one way out (an unknown name lists the valid ones). The built-in tasks register when
this package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from batchvision.errors import ConfigError

if TYPE_CHECKING:
    from batchvision.config import RunConfig
    from batchvision.models.spec import ModelSpec
    from batchvision.tasks.base import Task

_TASKS: dict[str, Task] = {}
_T = TypeVar("_T", bound="type[Task]")


def register_task(cls: _T) -> _T:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    key = cls.name
    if key in _TASKS:
        raise ValueError(f"A task is already registered under the name '{key}'.")
    _TASKS[key] = cls()
    return cls


def get_task(name: str) -> Task:
    """The task called ``name``; a ConfigError listing the valid ones if there is none."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(
            f"--task {name!r} is not valid; choose one of: {', '.join(list_tasks())}"
        ) from None


def list_tasks() -> list[str]:
    """Registered task names, in registration order."""
    return list(_TASKS)


def check_options(config: RunConfig, spec: ModelSpec) -> None:
    """Refuse options of other tasks, then let ``spec``'s task check its own."""
    from batchvision.tasks.base import config_defaults

    defaults = config_defaults()
    for name, task in _TASKS.items():
        if name == spec.task:
            continue
        for field, flag in task.options:
            if getattr(config, field) != defaults[field]:
                raise ConfigError(f"{flag} applies to --task {name} only; this run is {spec.task}")
    get_task(spec.task).check(config, spec)


from batchvision.tasks import classify, detect, embed, segment, zero_shot  # noqa: E402  (they register)

__all__ = [
    "check_options",
    "classify",
    "detect",
    "embed",
    "get_task",
    "list_tasks",
    "register_task",
    "segment",
    "zero_shot",
]
