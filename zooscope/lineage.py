"""Backbones taken from another zoo: ``zoo://`` references, selectors and lineage records.

A downstream config names a pretext checkpoint as its backbone::

    backbone = "zoo://pretext.h5#member=m3f9c0a1b2c4&epoch=10"

or a selector over the pretext zoo, which the config expands into one backbone per
selected checkpoint (the downstream grid is crossed with each)::

    backbone = "zoo://pretext.h5#epoch=last"            # every member at its last epoch
    backbone = "zoo://pretext.h5#member=m3f9c0a1b2c4"   # every epoch of one member
    backbone = "zoo://pretext.h5#learning_rate=1e-4&epoch=2,4"

Keys: ``member`` (ids, comma-separated, or ``*``), ``epoch`` (numbers, ``last`` or
``*``); any other key filters the parent's members by a generating factor. A relative
path is looked up beside the config file, then in the working directory
(``zoo:///abs/path.h5`` for an absolute one).

Lineage names the parent checkpoint by its content, not by the parent file: the
checkpoint digest combines the parent member's id and factors, the epoch and the
stored digest of every tensor, so analysing or extending the parent zoo keeps it
valid, and loading the backbone checks the tensors read against those digests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from zooscope.access import open_stored, open_zoo
from zooscope.errors import ConfigError, ZooFileError, ZooscopeError
from zooscope.zoo import canonical_json, same_value

if TYPE_CHECKING:
    from torch import nn

    from zooscope.config import ZooConfig
    from zooscope.store import StoredZoo
    from zooscope.zoo import Checkpoint, Member, Zoo

SCHEME = "zoo://"


@dataclass(frozen=True)
class ZooRef:
    """A parsed ``zoo://`` reference: the parent zoo's path and the selector."""

    path: str
    member: tuple[str, ...] | None
    epoch: tuple[int, ...] | str | None  # numbers, "last", or None for every epoch
    factors: tuple[tuple[str, str], ...]

    @property
    def exact(self) -> bool:
        return self.member is not None and len(self.member) == 1 and \
            isinstance(self.epoch, tuple) and len(self.epoch) == 1


def is_zoo_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def parse_ref(uri: str) -> ZooRef:
    """Parse ``zoo://PATH#key=value&...``; every mistake is a ``ConfigError`` naming it."""
    rest = uri.removeprefix(SCHEME)
    path, _, fragment = rest.partition("#")
    if not path:
        raise ConfigError(f"backbone {uri!r} names no zoo file",
                          hint="write zoo://pretext.h5#member=ID&epoch=E")
    member: tuple[str, ...] | None = None
    epoch: tuple[int, ...] | str | None = None
    factors: list[tuple[str, str]] = []
    for part in filter(None, fragment.split("&")):
        key, sep, value = part.partition("=")
        key, value = unquote(key.strip()), unquote(value.strip())
        if not sep or not key or not value:
            raise ConfigError(f"backbone {uri!r}: {part!r} is not key=value")
        if key == "member":
            member = None if value == "*" else tuple(v.strip() for v in value.split(","))
        elif key == "epoch":
            if value in ("*", "last"):
                epoch = None if value == "*" else "last"
            else:
                try:
                    epoch = tuple(int(v) for v in value.split(","))
                except ValueError:
                    raise ConfigError(f"backbone {uri!r}: epoch must be numbers, 'last' or '*', "
                                      f"not {value!r}") from None
        else:
            factors.append((key, value))
    return ZooRef(path=unquote(path), member=member, epoch=epoch, factors=tuple(factors))


def format_ref(path: str, member: str, epoch: int) -> str:
    return f"{SCHEME}{path}#member={member}&epoch={epoch}"


def checkpoint_digest(member: Member, epoch: int, tensor_digests: dict[str, str]) -> str:
    """The parent checkpoint's identity: SHA-256 over the canonical JSON of its member's
    id and factors, the epoch and each tensor's stored digest."""
    record = {"member": member.id, "factors": member.factors, "epoch": int(epoch),
              "tensors": tensor_digests}
    return hashlib.sha256(canonical_json(record).encode()).hexdigest()


def _stored_digest(zoo: Zoo, member: Member, checkpoint: Checkpoint) -> str:
    return checkpoint_digest(member, checkpoint.epoch, zoo.checkpoint_digests(checkpoint))


def _resolve(ref: ZooRef, base: Path | None) -> Path:
    """The parent zoo's path: beside the config file, else in the working directory
    (where ``zooscope generate`` writes zoos by default)."""
    p = Path(ref.path).expanduser()
    if p.is_absolute() or base is None:
        return p
    return base / p if (base / p).exists() or not p.exists() else p


def expand(uri: str, base: Path | None) -> list[tuple[str, dict[str, Any]]]:
    """The exact references a (selector) reference stands for, with each one's lineage."""
    ref = parse_ref(uri)
    path = _resolve(ref, base)
    if not path.exists():
        raise ConfigError(f"backbone {uri!r}: no zoo file at {path}",
                          hint="generate the pretext zoo first, or fix the path")
    try:
        with open_zoo(path) as zoo:
            members = zoo.members()
            known = {m.id for m in members}
            for mid in ref.member or ():
                if mid not in known:
                    raise ConfigError(f"backbone {uri!r}: {path.name} has no member {mid!r}",
                                      hint="list them with: zooscope zoo ls " + str(path))
            chosen: list[tuple[str, int, str]] = []
            for m in members:
                if ref.member is not None and m.id not in ref.member:
                    continue
                if any(k not in m.factors or not same_value(m.factors[k], _number(v))
                       for k, v in ref.factors):
                    continue
                cps = {c.epoch: c for c in zoo.checkpoints(m)}
                epochs = list(cps)
                if not epochs:
                    if ref.member is not None:
                        raise ConfigError(f"backbone {uri!r}: member {m.id} has no committed "
                                          "checkpoint yet")
                    continue
                if ref.epoch == "last":
                    wanted = [epochs[-1]]
                elif ref.epoch is None:
                    wanted = epochs
                else:
                    missing = [e for e in ref.epoch if e not in epochs]
                    if missing and ref.member is not None:
                        raise ConfigError(
                            f"backbone {uri!r}: member {m.id} has no epoch {missing[0]} "
                            f"(it has {epochs[0]}..{epochs[-1]})")
                    wanted = [e for e in ref.epoch if e in epochs]
                chosen += [(m.id, e, _stored_digest(zoo, m, cps[e])) for e in wanted]
    except ZooscopeError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"backbone {uri!r}: {exc.message}") from None
    if not chosen:
        raise ConfigError(f"backbone {uri!r} selects no checkpoint of {path.name}")
    return [(format_ref(ref.path, mid, e), {"checkpoint": digest, "path": ref.path,
                                             "member": mid, "epoch": e})
            for mid, e, digest in chosen]


def expand_parents(cfg: ZooConfig) -> ZooConfig:
    """Read the parent zoo of every ``zoo://`` backbone the config names and record, once,
    the exact checkpoints each selector stands for in ``cfg.parents`` (which
    ``ZooConfig.members`` then expands). Returns the config."""
    base = cfg.path.parent if cfg.path is not None else None
    for name in cfg.grid.get("backbone", [cfg.zoo["backbone"]]):
        if is_zoo_ref(name) and name not in cfg.parents:
            cfg.parents[name] = expand(name, base)
    return cfg


def _number(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def verify(zoo: StoredZoo, uri: str, member: Member, epoch: int, expected: str | None) -> None:
    """Check a parent checkpoint by content: every tensor against its stored digest, and
    the checkpoint digest against the one the lineage recorded (where it recorded one)."""
    checkpoint = next((c for c in zoo.checkpoints(member) if c.epoch == epoch), None)
    if checkpoint is None:
        raise ConfigError(f"backbone {uri!r}: member {member.id} has no epoch {epoch}")
    for name in zoo.tensor_names(member):
        problems = zoo.check_tensor(checkpoint, name)
        if problems:
            raise ZooFileError(f"backbone {uri!r}: {problems[0]}",
                               hint="the parent zoo is damaged: restore it or regenerate it")
    if expected is not None and _stored_digest(zoo, member, checkpoint) != expected:
        raise ZooFileError(
            f"backbone {uri!r}: the parent checkpoint's content is not the one this zoo's "
            "lineage records", hint="the parent zoo was regenerated or replaced; use the "
            "parent this zoo was built from, or generate a new zoo")


def verify_parents(members: list[Member], base: Path | None) -> None:
    """Verify by content every parent checkpoint the members start from, once each, so a
    damaged parent stops ``generate`` before it creates or extends any file."""

    seen: set[tuple[str, str, int]] = set()
    for m in members:
        lin = m.lineage or {}
        uri = str(m.factors.get("backbone", ""))
        if "checkpoint" not in lin or not is_zoo_ref(uri):
            continue
        key = (lin["path"], lin["member"], int(lin["epoch"]))
        if key in seen:
            continue
        seen.add(key)
        with open_stored(_resolve(parse_ref(uri), base)) as zoo:
            verify(zoo, uri, zoo.member(lin["member"]), int(lin["epoch"]), lin["checkpoint"])


def load_from_zoo(uri: str, base: Path | None, dropout: float, kind: str = "base",
                  expected: str | None = None) -> tuple[nn.Module, Any]:
    """The model a zoo checkpoint holds, as a fresh backbone with the given dropout.

    ``kind`` ``"base"`` gives the bare encoder (``AutoModel``), ``"masked-lm"`` the
    encoder with its masked-LM head (continuing pre-training from a checkpoint).
    The checkpoint is verified by content first (``verify``); ``expected`` is the
    checkpoint digest the member's lineage records.
    """
    import json
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    from zooscope.kit.models import HEAD_FILE, load_tokenizer, rebuild, set_dropout

    ref = parse_ref(uri)
    if not ref.exact:
        raise ConfigError(f"backbone {uri!r} is a selector, not one checkpoint")
    path = _resolve(ref, base)
    with open_stored(path) as zoo:
        member = zoo.member(ref.member[0])  # type: ignore[index]
        verify(zoo, uri, member, ref.epoch[0], expected)  # type: ignore[index]
        files = zoo.model_files(member)
        parent, _ = rebuild(zoo, member, ref.epoch[0])  # type: ignore[index]
    head = json.loads(files.get(HEAD_FILE, b'{"kind": "base-model"}'))
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_bytes(files["config.json"])
        config = AutoConfig.from_pretrained(tmp)
    set_dropout(config, dropout)
    if kind == "masked-lm":
        if head["kind"] != "masked-lm":
            raise ConfigError(f"backbone {uri!r} holds a {head['kind']} model, not a masked LM")
        model = AutoModelForMaskedLM.from_config(config)
        source = parent.state_dict()
    else:
        kwargs = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta") else {}
        model = AutoModel.from_config(config, **kwargs)
        encoder = parent.backbone if head["kind"] == "sequence-classification" or \
            head["kind"] == "question-answering" else getattr(parent, "base_model", parent)
        source = encoder.state_dict()
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in source and not k.endswith("position_ids")]
    if missing:
        raise ConfigError(f"backbone {uri!r}: the stored model lacks {missing[:3]}")
    with torch.no_grad():
        model.load_state_dict({k: source[k] for k in wanted if k in source}, strict=False)
    return model, load_tokenizer(files)
