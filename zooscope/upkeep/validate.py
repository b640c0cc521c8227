"""``zoo validate``: format, layout, shapes against the model config, digests, NaN/Inf and completeness.

They read through the ``Zoo`` interface and write through a store's writer; the
file format is the store's business.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zooscope.access import open_stored, store_for
from zooscope.zoo import Architecture


@dataclass
class ValidationReport:
    path: Path
    checkpoints: int = 0
    tensors_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_zoo(path: Path, on_checkpoint: Callable[[], None] = lambda: None) -> ValidationReport:
    """Check format, layout, shapes against the model config, checksums, NaN/Inf, completeness."""
    report = ValidationReport(path=path)
    with open_stored(path) as zoo:  # format version, safety and declared shapes are checked here
        checkpoints = zoo.checkpoints()
        report.checkpoints = len(checkpoints)
        writing = store_for(Path(path)).being_written(Path(path))
        report.problems += zoo.check_structure()
        report.notes += zoo.structure_notes()
        for member in zoo.members():
            if member.status == "running" and not writing:
                # A process killed outright cannot record that it stopped; the lock tells.
                report.notes.append(f"member {member.id} was interrupted (no process is "
                                    "writing the zoo); `zooscope generate --resume` continues it")
            elif member.status == "interrupted":
                report.notes.append(f"member {member.id} was interrupted; "
                                    "`zooscope generate --resume` continues it")
            elif member.status == "running":
                report.notes.append(f"member {member.id} is being trained by a running process")
            elif member.status != "complete":
                report.notes.append(f"member {member.id} is {member.status}")
        uncommitted = zoo.uncommitted_rows()
        if uncommitted:
            report.notes.append(
                f"{uncommitted} half-written checkpoint(s) after the last commit "
                "(ignored by readers, discarded by --resume)")
        checked_arch: set[str] = set()
        archs: dict[str, Architecture] = {}  # read each member's model files once
        for c in checkpoints:
            if c.member not in archs:
                archs[c.member] = zoo.architecture(c.member)
            arch = archs[c.member]
            fp = json.dumps(sorted(arch.shapes.items()))
            if fp not in checked_arch:
                checked_arch.add(fp)
                if importlib.util.find_spec("torch") is not None:
                    report.problems += _shapes_against_config(arch)
                elif len(checked_arch) == 1:
                    report.notes.append("tensor shapes were not checked against the model "
                                        "configs: that needs torch (pip install "
                                        "'zooscope[train]')")
            for name in arch.shapes:
                report.problems += zoo.check_tensor(c, name)
                report.tensors_checked += 1
            on_checkpoint()
    return report


def _shapes_against_config(arch: Architecture) -> list[str]:
    """Build the model on the meta device from the stored config and compare every shape."""
    import torch

    from zooscope.kit.models import skeleton

    try:
        with torch.device("meta"):
            model = skeleton(arch.files)
    except Exception as exc:  # a damaged config.json is a finding, not a crash
        return [f"architecture {arch.key!r}: cannot build the model from its config ({exc})"]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    for name, shape in arch.shapes.items():
        if name not in expected:
            problems.append(f"tensor {name!r} is not part of the model its config describes")
        elif expected[name] != tuple(shape):
            problems.append(f"tensor {name!r} has shape {tuple(shape)}, the config implies "
                            f"{expected[name]}")
    missing = [n for n in expected if n not in arch.shapes and not n.endswith("position_ids")]
    if missing:
        problems.append(f"the zoo lacks tensors of the model: {', '.join(missing[:5])}")
    return problems
