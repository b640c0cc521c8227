"""The hook specifications every zooscope plugin implements against.

Markers and specs only; the manager that calls them lives in ``zooscope.registry``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from zooscope.analysis import Analyzer
    from zooscope.generator import Generator
    from zooscope.store import Store
    from zooscope.zoo import Member

hookspec = pluggy.HookspecMarker("zooscope")
hookimpl = pluggy.HookimplMarker("zooscope")


@hookspec
def zooscope_register_generators(register: Callable[[Generator], None]) -> None:
    """Register generators: objects that train one member spec into checkpoints.

    Call ``register(generator)`` once for each generator the plugin provides. The
    generator's ``name`` is what a zoo config's ``[zoo] generator`` key names; two
    plugins registering the same name is an error that names both plugins.

    :param register: the callback that records one :class:`zooscope.generator.Generator`.
    """


@hookspec
def zooscope_register_stores(register: Callable[[Store], None]) -> None:
    """Register stores: objects that persist zoos and open them for reading.

    Call ``register(store)`` once for each store. A store claims file names by the
    suffixes it lists (``.h5`` for the built-in HDF5 store).

    :param register: the callback that records one :class:`zooscope.store.Store`.
    """


@hookspec
def zooscope_register_analyzers(register: Callable[[Analyzer], None]) -> None:
    """Register analyzers: objects that read a zoo and return tables, figures and a summary.

    Call ``register(analyzer)`` once for each analyzer; its ``name`` is what
    ``zooscope analyze --plugin NAME`` selects.

    :param register: the callback that records one :class:`zooscope.analysis.Analyzer`.
    """


@hookspec
def zooscope_checkpoint_saved(zoo: str, member: Member, epoch: int, metrics: dict[str, Any]) -> None:
    """Called after a checkpoint is committed to the zoo file.

    The checkpoint is complete and readable when this runs. Observers must not
    write to the zoo; raising here is reported with the plugin's name and stops
    the generation, since a broken observer should not silently miss checkpoints.

    :param zoo: the path of the file the checkpoint was written to (a shard under
        multi-process generation).
    :param member: the member the checkpoint belongs to.
    :param epoch: the epoch the checkpoint records (0 is the state before training).
    :param metrics: metric name (``test_accuracy``, ``validation_loss``, ...) to value.
    """


@hookspec
def zooscope_member_finished(zoo: str, member: Member) -> None:
    """Called once a member has all its checkpoints and is marked complete.

    :param zoo: the path of the file the member was written to.
    :param member: the member that finished.
    """
