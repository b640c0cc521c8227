"""The zoo config: parsing and validating the TOML file, and expanding its grid into members.

Everything the core knows is checked here, before anything trains or any file is
touched. Keys a generator declares (``Generator.config_keys``) are checked when the
config is bound to its generator (``ZooConfig.bind``, through
``zooscope.registry.generator_for``); checks that need the data (files, columns) are the
generator's ``validate``.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscope.errors import ConfigError
from zooscope.search import Search, parse_search
from zooscope.zoo import SAFE_NAME, Member, canonical_json, member_id

_NUMBER = (int, float)

#: Every key the core knows, by table, with the type(s) it accepts. Generators add keys of
#: their own to the tables in ``OWNABLE`` (``Generator.config_keys``).
SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "zoo": {
        "name": (str,), "generator": (str,), "backbone": (str,), "seeds": (list,),
        "epochs": (int,), "strategy": (str,), "description": (str,), "max_members": (int,),
        "license": (str,), "data_license": (str,), "max_part_size": (int, str),
    },
    "grid": {},  # any factor name; values are non-empty lists
    "search": {},  # samples, seed, and any factor name with a distribution (zooscope.search)
    "train": {
        "batch_size": (int, str), "eval_batch_size": (int,), "optimizer": (str,),
        "max_batch_size": (int,),
        "dropout": _NUMBER, "lr_schedule": (str,), "max_seq_len": (int,), "head": (dict,),
        "freeze_backbone": (bool,), "max_train_examples": (int,), "eval_train": (bool,),
        "max_eval_examples": (int,),
        "mixed_precision": (str,), "device": (str,), "num_threads": (int,),
        "share_epochs": (bool,), "warmup_ratio": _NUMBER,
        "gradient_accumulation_steps": (int,), "max_grad_norm": _NUMBER,
        "log_with": (str, list),
    },
    # Where data lives and how it is split; a generator declares the other [data] keys
    # it reads (``Generator.config_keys``).
    "data": {
        "source": (str,), "split": (dict,), "test_source": (str,), "validation_source": (str,),
    },
    "scratch": {
        "model_type": (str,), "hidden_size": (int,), "num_hidden_layers": (int,),
        "num_attention_heads": (int,), "intermediate_size": (int,), "vocab_size": (int,),
        "max_position_embeddings": (int,), "seed": (int,),
    },
    "store": {"dtype": (str,), "compression": (str,)},
}
REQUIRED = {"zoo": ("name", "generator"), "grid": ()}
#: Tables a generator may declare keys in.
OWNABLE = ("data", "train")
DEFAULTS: dict[str, dict[str, Any]] = {
    "zoo": {"seeds": [0], "epochs": 1, "strategy": "members", "backbone": "bert-base-uncased",
            "max_members": 10_000, "max_part_size": "45GB"},
    "train": {
        "batch_size": 32, "eval_batch_size": 256, "optimizer": "adamw", "dropout": 0.1,
        "lr_schedule": "constant", "max_seq_len": 512, "head": {"hidden": 1, "activation": "relu"},
        "freeze_backbone": False, "max_train_examples": 0, "eval_train": True,
        "max_eval_examples": 0,
        "mixed_precision": "no", "device": "auto", "num_threads": 0, "share_epochs": True,
        "warmup_ratio": 0.1, "gradient_accumulation_steps": 1, "max_grad_norm": 0.0,
        "max_batch_size": 256,
        "log_with": [],
    },
    "data": {"split": {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 0}},
    "scratch": {
        "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 128, "vocab_size": 1000,
        "max_position_embeddings": 128, "seed": 0,
    },
    "store": {"dtype": "float32", "compression": "none"},
}
CHOICES = {
    ("zoo", "strategy"): ("members", "ddp"),
    ("train", "optimizer"): ("adamw", "adam"),
    ("train", "lr_schedule"): ("constant", "linear"),
    ("train", "mixed_precision"): ("no", "fp16", "bf16", "auto"),
    ("store", "dtype"): ("float32", "float16", "bfloat16"),
    ("store", "compression"): ("none", "lz4", "zstd", "gzip"),
    # Encoders whose first token feeds the task head and that build without a hub.
    ("scratch", "model_type"): ("bert", "roberta", "distilbert"),
}
#: ``[train] log_with``: Accelerate's trackers, each with the package it needs.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow",
            "comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}
#: Grid factors with a meaning the engine knows; others are passed to the generator.
POSITIVE_FACTORS = ("learning_rate", "epochs", "batch_size")
#: [train] keys that change a member's weights (the others change only evaluation,
#: speed or where it runs); they enter member ids.
TRAINING_KEYS = ("batch_size", "optimizer", "dropout", "lr_schedule", "max_seq_len", "head",
                 "freeze_backbone", "max_train_examples", "mixed_precision")
#: [data] keys that say where data lives; the data fingerprint stands for their content.
DATA_LOCATIONS = ("source", "test_source", "validation_source")
#: Seeds feed torch, numpy and Python generators; numpy takes 32 bits, and the engine
#: derives each epoch's data order from ``seed * 1_000_003 + epoch`` in torch's 64 bits.
MAX_SEED = 2**32 - 1
#: Factor values become HDF5 columns (int64, float64, bool or text).
_FACTOR_TYPES = (str, int, float, bool)
#: Factor names become dataset names in the zoo file (``members/table/<factor>``).
_FACTOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
#: ``[train] device``: what torch.device accepts and this engine can train on.
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]{1,3})?)\Z")
MAX_THREADS = 1024
#: A config is a page of TOML; a larger file is not one (and is stored in every zoo).
MAX_CONFIG_BYTES = 2**20


@dataclass(frozen=True)
class ConfigKey:
    """A config key a generator owns: the types it accepts, its default, what it means,
    and the values it allows (``choices``, or a ``minimum`` and ``maximum``, inclusive)."""

    types: tuple[type, ...]
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def check(self, where: str, value: Any) -> None:
        check_type(where, value, self.types)
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where} = {value!r} is not one of "
                              f"{', '.join(str(c) for c in self.choices)}")
        if isinstance(value, _NUMBER) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where} must be finite, got {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"{where} must be ≥ {self.minimum:g}, got {value!r}")
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(f"{where} must be ≤ {self.maximum:g}, got {value!r}")
        if isinstance(value, str) and "\0" in value:
            raise ConfigError(f"{where} holds a NUL character")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(where: str, value: Any) -> int:
    """A size in bytes from a number or a text such as ``"45GB"``, ``"500 MB"`` or
    ``"2GiB"`` (k, M, G, T are powers of 1000; Ki, Mi, Gi, Ti powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(str(value))
        unit = match.group(2).lower().removesuffix("b") if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(f"{where} = {value!r} is not a size",
                              hint='give bytes, or a number with a unit: "45GB", "500MB"')
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < 64 << 10:
        raise ConfigError(f"{where} = {value!r} is less than 64 KiB",
                          hint='give a unit: "45GB", "500MB"')
    return size


@dataclass
class ZooConfig:
    """A validated zoo config: the tables with defaults filled in, and the text it came from."""

    text: str
    path: Path | None
    zoo: dict[str, Any]
    grid: dict[str, list[Any]]
    train: dict[str, Any]
    data: dict[str, Any]
    scratch: dict[str, Any]
    store: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)
    #: Random search inside each grid cell (``[search]``), or None.
    search: Search | None = None
    #: Keys of the ``OWNABLE`` tables the core does not know, left for the generator's
    #: ``config_keys`` (``bind``); a config that reaches the engine has none left.
    unowned: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``zoo://`` selectors, each with the exact checkpoints (backbone and lineage) it
    #: stands for; filled by ``zooscope.lineage.expand_parents``, which reads the parents.
    parents: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.zoo["name"])

    @property
    def generator(self) -> str:
        return str(self.zoo["generator"])

    @property
    def max_part_size(self) -> int:
        """``[zoo] max_part_size`` in bytes: where a zoo of parts starts its next part."""
        return parse_size("[zoo] max_part_size", self.zoo["max_part_size"])

    def resolve(self, value: str) -> str:
        """A path in the config, relative to the config file's folder; hub ids stay as they are.

        ``package:NAME/SUBDIR`` is a folder inside an installed Python package (a model
        shipped on PyPI, for machines without hub access).
        """
        if value.startswith("package:"):
            import importlib.util

            package, _, sub = value.removeprefix("package:").partition("/")
            spec = importlib.util.find_spec(package) if package.isidentifier() else None
            if spec is None or not spec.submodule_search_locations:
                raise ConfigError(f"{value!r}: the Python package {package!r} is not installed",
                                  hint=f"pip install --no-deps {package.replace('_', '-')}")
            return str(Path(next(iter(spec.submodule_search_locations))) / sub)
        if self.path is None or value.startswith(("zoo://", "scratch")):
            return value
        candidate = Path(value).expanduser()
        if candidate.is_absolute():
            return str(candidate)
        local = self.path.parent / candidate
        looks_local = value.startswith((".", "/", "~")) or local.exists()
        return str(local.resolve()) if looks_local else value

    def recipe(self, generator_version: str, data: dict[str, Any],
               default_optimizer: str = "adamw") -> dict[str, Any]:
        """What besides its factors decides every member's weights, for member ids.

        ``data`` is the generator's data record (its ``fingerprints``); only the training
        split's fingerprint enters: validation and test data change no weight.
        """
        train = {k: self.train[k] for k in TRAINING_KEYS}
        train["optimizer"] = self.raw.get("train", {}).get("optimizer", default_optimizer)
        if self.schedules != {"constant"}:  # the warm-up matters only to a schedule that has one
            train["warmup_ratio"] = self.train["warmup_ratio"]
        # Left out at their defaults, so zoos made before they existed keep their ids.
        for key, default in (("gradient_accumulation_steps", 1), ("max_grad_norm", 0.0)):
            if self.train[key] != default:
                train[key] = self.train[key]
        return {
            "generator": self.generator, "generator_version": str(generator_version),
            "data": {"train": data.get("fingerprints", {}).get("train"),
                     **{k: v for k, v in self.data.items() if k not in DATA_LOCATIONS}},
            "train": train,
        }

    def batch_size_of(self, member: Member) -> int:
        """The member's training batch size. ``generate`` replaces ``"auto"`` by the size it
        chose before any member is built; elsewhere (rebuilding a model to evaluate it,
        where no batch is drawn) ``"auto"`` stands for ``max_batch_size``."""
        value = member.factors.get("batch_size", self.train["batch_size"])
        return int(self.train["max_batch_size"] if value == "auto" else value)

    @property
    def schedules(self) -> set[str]:
        """The learning-rate schedules the members use (``[train] lr_schedule``, or the
        values of an ``lr_schedule`` factor)."""
        if "lr_schedule" in self.grid:
            return {str(v) for v in self.grid["lr_schedule"]}
        return {str(self.train["lr_schedule"])}

    @property
    def factor_names(self) -> list[str]:
        """The factors the config varies, [grid] then [search], in the order written."""
        return [*self.grid, *(self.search.factors if self.search else ())]

    def members(self, recipe: dict[str, Any] | None = None) -> list[Member]:
        """The product of the grid, the [search] points and the seeds, in a fixed order.

        ``zoo://`` selectors expand into one backbone per selected parent checkpoint
        where ``zooscope.lineage.expand_parents`` has read the parents (``parents``), and
        stay as written otherwise. Ids cover
        ``recipe`` (``ZooConfig.recipe``), each member's epochs, its backbone (a
        ``zoo://`` one by the parent checkpoint's digest, not its path; ``scratch`` with
        the [scratch] table) and its factors; without a recipe, the factors alone.
        """
        grid = dict(self.grid)
        backbones = grid.pop("backbone", [self.zoo["backbone"]])
        lineage: dict[str, dict[str, Any]] = {}
        grid["backbone"] = []
        for name in backbones:
            for concrete, parent in self.parents.get(name, [(name, None)]):
                grid["backbone"].append(concrete)
                if parent is not None:
                    lineage[concrete] = parent
        keys = sorted(grid)
        points = self.search.points() if self.search else [{}]
        members = []
        for values in itertools.product(*(grid[k] for k in keys)):
            for point in points:
                for seed in self.zoo["seeds"]:
                    factors = dict(sorted({**dict(zip(keys, values, strict=True)),
                                           **point}.items()))
                    factors["seed"] = seed
                    parent = lineage.get(factors["backbone"])
                    mid = member_id(*self._identity(factors, parent, recipe))
                    members.append(Member(id=mid, factors=factors, lineage=parent))
        varied_epochs = len(self.grid.get("epochs", [])) > 1 or (
            self.search is not None and "epochs" in self.search.factors)
        if self.train["share_epochs"] and varied_epochs and self.schedules == {"constant"}:
            members = _share_epochs(members)
        ids = [m.id for m in members]
        if len(set(ids)) != len(ids):
            raise ConfigError("the grid lists the same member twice",
                              hint="remove repeated values from [grid] or [zoo] seeds")
        return members

    def _identity(self, factors: dict[str, Any], parent: dict[str, Any] | None,
                  recipe: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The factors and recipe a member's id hashes."""
        if recipe is None:
            return factors, None
        backbone: Any = factors["backbone"]
        if parent is not None and "checkpoint" in parent:
            backbone = {"zoo_checkpoint": parent["checkpoint"]}
        elif backbone == "scratch":
            backbone = {"scratch": self.scratch}
        own = {**recipe, "epochs": self.epochs_of(Member(id="", factors=factors))}
        return {**factors, "backbone": backbone}, own

    def lineage_of(self, backbone: str) -> dict[str, Any]:
        """The lineage of an exact ``zoo://`` backbone this config's members use, or ``{}``
        where it was not expanded here."""
        for expanded in self.parents.values():
            for concrete, parent in expanded:
                if concrete == backbone and parent is not None:
                    return dict(parent)
        return {}

    def bind(self, keys: Mapping[str, Mapping[str, ConfigKey]], owner: str,
             elsewhere: Mapping[tuple[str, str], Sequence[str]] | None = None) -> None:
        """Check the keys the core left (``unowned``) against the generator's declared
        ``keys``: each must be declared, of its type and in its range. ``elsewhere`` names
        the generators that own a key this one does not, for the error."""
        for table, given in self.unowned.items():
            owned = keys.get(table, {})
            for key, value in given.items():
                if key in owned:
                    owned[key].check(f"[{table}] {key}", value)
                    continue
                others = list((elsewhere or {}).get((table, key), ()))
                if others:
                    raise ConfigError(f"[{table}] {key} is a setting of the {', '.join(others)} "
                                      f"generator; {owner} does not use it",
                                      hint=f"remove it, or use generator = {others[0]!r}")
                raise ConfigError(f"unknown key {key!r} in [{table}]",
                                  hint=closest(key, [*SCHEMA[table], *owned]))
        self.unowned = {}

    def epochs_of(self, member: Member) -> int:
        return int(member.factors.get("epochs", self.zoo["epochs"]))


def _share_epochs(members: list[Member]) -> list[Member]:
    """Mark members whose checkpoints are a longer run's first epochs.

    With a constant learning rate (only then), the member trained for 5
    epochs is the 9-epoch member's first 5 checkpoints: same seed, same data order,
    same steps. Such members record ``checkpoints_from`` (the longest sibling's id) in
    their lineage; the engine commits that run's checkpoints for them.
    """
    groups: dict[str, list[Member]] = {}
    for m in members:
        rest = {k: v for k, v in m.factors.items() if k != "epochs"}
        groups.setdefault(canonical_json(rest), []).append(m)
    out = []
    for m in members:
        rest = {k: v for k, v in m.factors.items() if k != "epochs"}
        longest = max(groups[canonical_json(rest)], key=lambda s: int(s.factors["epochs"]))
        if longest.id != m.id and int(longest.factors["epochs"]) > int(m.factors["epochs"]):
            m = Member(id=m.id, factors=m.factors,
                       lineage={**(m.lineage or {}), "checkpoints_from": longest.id})
        out.append(m)
    return out


def closest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"


def type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table", bool: "true or false"}
    if types == _NUMBER:
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_type(where: str, value: Any, types: tuple[type, ...]) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise ConfigError(f"{where} must be {type_name(types)}, not {type(value).__name__} "
                          f"({value!r})")


def parse_config(text: str, path: Path | None = None) -> ZooConfig:
    """Parse and validate config text; every problem is a ``ConfigError`` naming the key."""
    where = f" in {path}" if path else ""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config{where} is not valid TOML: {exc}") from None
    for table in raw:
        if table not in SCHEMA:
            raise ConfigError(f"unknown table [{table}]{where}", hint=closest(table, list(SCHEMA)))
        if not isinstance(raw[table], dict):
            raise ConfigError(f"{table} must be a table ([{table}])")
    for table, keys in REQUIRED.items():
        if table not in raw and not (table == "grid" and "search" in raw):
            raise ConfigError(f"the config{where} has no [{table}] table",
                              hint="[grid] or [search] lists the factors members differ in"
                              if table == "grid" else None)
        for key in keys:
            if key not in raw[table]:
                raise ConfigError(f"[{table}] needs a {key!r} key")
    tables: dict[str, dict[str, Any]] = {}
    unowned: dict[str, dict[str, Any]] = {}
    for table, schema in SCHEMA.items():
        given = raw.get(table, {})
        if table not in ("grid", "search"):
            for key, value in given.items():
                if key in schema:
                    check_type(f"[{table}] {key}", value, schema[key])
                elif table in OWNABLE:
                    unowned.setdefault(table, {})[key] = value  # the generator's to check
                else:
                    raise ConfigError(f"unknown key {key!r} in [{table}]",
                                      hint=closest(key, list(schema)))
        merged = {**DEFAULTS.get(table, {}), **given}
        tables[table] = merged
    for (table, key), choices in CHOICES.items():
        value = tables[table].get(key)
        if value is not None and value not in choices:
            raise ConfigError(f"[{table}] {key} = {value!r} is not one of {', '.join(choices)}")
    zoo = tables["zoo"]
    if not zoo["name"].strip():
        raise ConfigError("[zoo] name must not be empty")
    # The name is the default output file (NAME.h5 in the working directory): never a path.
    if not SAFE_NAME.match(zoo["name"]) or ".." in zoo["name"]:
        raise ConfigError(f"[zoo] name {zoo['name']!r} may hold only letters, digits, '_', '.' "
                          "and '-' (it names the zoo file)",
                          hint="choose where the zoo goes with --out")
    _check_positive("[zoo] epochs", zoo["epochs"])
    _check_positive("[zoo] max_members", zoo["max_members"])
    parse_size("[zoo] max_part_size", zoo["max_part_size"])
    seeds = zoo["seeds"]
    if not seeds:
        raise ConfigError("[zoo] seeds is empty", hint="give at least one seed, e.g. seeds = [0]")
    for s in seeds:
        check_type("each of [zoo] seeds", s, (int,))
        _check_seed("[zoo] seeds", s)
    if len(set(seeds)) != len(seeds):
        raise ConfigError("[zoo] seeds repeats a seed")
    grid = tables["grid"]
    for key, values in grid.items():
        if not _FACTOR_NAME.match(key):
            raise ConfigError(f"[grid] factor name {key!r} must be a word of letters, digits and "
                              "'_' (it names a column of the zoo file)")
        if not isinstance(values, list):
            raise ConfigError(f"[grid] {key} must be a list of values, e.g. {key} = [{values!r}]")
        if not values:
            raise ConfigError(f"[grid] {key} is empty", hint="a factor needs at least one value")
        for v in values:
            _check_factor_value(key, v)
        if key in POSITIVE_FACTORS:
            for v in values:
                check_type(f"each of [grid] {key}", v, (int,) if key != "learning_rate" else _NUMBER)
                _check_positive(f"[grid] {key}", v)
        if key == "weight_decay":
            for v in values:
                check_type("each of [grid] weight_decay", v, _NUMBER)
                if v < 0 or not math.isfinite(v):
                    raise ConfigError(f"[grid] weight_decay must be ≥ 0, got {v!r}")
        if key == "seed":
            raise ConfigError("seeds go in [zoo] seeds, not in [grid]")
        if key == "lr_schedule":
            for v in values:
                if v not in CHOICES[("train", "lr_schedule")]:
                    raise ConfigError(f"[grid] lr_schedule value {v!r} is not one of "
                                      f"{', '.join(CHOICES[('train', 'lr_schedule')])}")
    search = _check_search(raw["search"], grid) if "search" in raw else None
    if "learning_rate" not in grid and "learning_rate" not in (search.factors if search else {}):
        raise ConfigError("[grid] needs a learning_rate list",
                          hint="e.g. learning_rate = [2e-5, 3e-5, 5e-5], or "
                          "learning_rate = \"log_uniform(1e-5, 1e-4)\" in [search]")
    for value in grid.get("backbone", []):
        check_type("each of [grid] backbone", value, (str,))
    # Counted before any member is built: expanding an absurd grid alone exhausts memory.
    count = math.prod(len(v) for v in grid.values()) * len(seeds) * (
        search.samples if search else 1)
    if count > zoo["max_members"]:
        what = "grid and search have" if search else "grid has"
        raise ConfigError(f"the {what} {count:,} members, more than [zoo] max_members = "
                          f"{zoo['max_members']:,}",
                          hint=f"shrink [grid]{' or [search] samples' if search else ''}, or "
                          "raise [zoo] max_members if you mean it")
    train = tables["train"]
    if train["batch_size"] != "auto" and (isinstance(train["batch_size"], bool)
                                         or not isinstance(train["batch_size"], int)):
        raise ConfigError(f'[train] batch_size must be an integer or "auto", not '
                          f'{train["batch_size"]!r}')
    for key in ("batch_size", "eval_batch_size", "max_seq_len", "max_batch_size"):
        if train[key] != "auto":
            _check_positive(f"[train] {key}", train[key])
    if not 0 <= train["num_threads"] <= MAX_THREADS:
        raise ConfigError(f"[train] num_threads must be 0 (all cores) to {MAX_THREADS}, "
                          f"got {train['num_threads']!r}")
    if not _DEVICE.match(train["device"]):
        raise ConfigError(f"[train] device = {train['device']!r} is not one of auto, cpu, cuda, "
                          "cuda:N, mps")
    if not 0 <= train["dropout"] < 1:
        raise ConfigError(f"[train] dropout must be in [0, 1), got {train['dropout']!r}")
    if not 0 <= train["warmup_ratio"] < 1:
        raise ConfigError(f"[train] warmup_ratio must be in [0, 1), got {train['warmup_ratio']!r}")
    if not 1 <= train["gradient_accumulation_steps"] <= 65536:
        raise ConfigError("[train] gradient_accumulation_steps must be 1 to 65536, got "
                          f"{train['gradient_accumulation_steps']!r}")
    if not (train["max_grad_norm"] >= 0 and math.isfinite(train["max_grad_norm"])):
        raise ConfigError(f"[train] max_grad_norm must be ≥ 0 (0: no clipping), got "
                          f"{train['max_grad_norm']!r}")
    trackers = [train["log_with"]] if isinstance(train["log_with"], str) else train["log_with"]
    for name in trackers:
        if not isinstance(name, str) or name not in TRACKERS:
            raise ConfigError(f"[train] log_with {name!r} is not one of {', '.join(TRACKERS)}")
    train["log_with"] = list(dict.fromkeys(trackers))
    for key in ("max_train_examples", "max_eval_examples"):
        if train[key] < 0:
            raise ConfigError(f"[train] {key} must be ≥ 0 (0 means all)")
    head = train["head"]
    for key in head:
        if key not in ("hidden", "activation"):
            raise ConfigError(f"unknown key {key!r} in [train] head",
                              hint=closest(key, ["hidden", "activation"]))
    if head.get("hidden", 1) not in (0, 1) or head.get("activation", "relu") != "relu":
        raise ConfigError("[train] head supports hidden = 0 or 1 and activation = \"relu\"")
    split = tables["data"]["split"]
    for key in split:
        if key not in ("train", "validation", "test", "seed"):
            raise ConfigError(f"unknown key {key!r} in [data] split",
                              hint=closest(key, ["train", "validation", "test", "seed"]))
    fractions = [split.get(k, 0.0) for k in ("train", "validation", "test")]
    for k, v in zip(("train", "validation", "test"), fractions, strict=True):
        check_type(f"[data] split {k}", v, _NUMBER)
        if not (v >= 0 and math.isfinite(v)):
            raise ConfigError(f"[data] split {k} must be ≥ 0 and finite, got {v!r}")
    if split.get("train", 0) <= 0:
        raise ConfigError("[data] split train must be > 0")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"[data] split fractions add up to {sum(fractions):g}, not 1")
    if "seed" in split:
        check_type("[data] split seed", split["seed"], (int,))
        _check_seed("[data] split seed", split["seed"])
    data = tables["data"]
    for key in ("source", "test_source", "validation_source"):
        if "\0" in data.get(key, ""):
            raise ConfigError(f"[data] {key} holds a NUL character")
    if "\0" in zoo["backbone"] or "\0" in zoo["generator"]:
        raise ConfigError("[zoo] backbone and generator must not hold a NUL character")
    scratch = tables["scratch"]
    for key, value in scratch.items():
        if isinstance(value, int) and key != "seed":
            _check_positive(f"[scratch] {key}", value)
    _check_seed("[scratch] seed", scratch["seed"])
    cfg = ZooConfig(text=text, path=path, zoo=zoo, grid=grid, train=train, data=tables["data"],
                    scratch=scratch, store=tables["store"], raw=raw, unowned=unowned,
                    search=search)
    cfg.members()  # refuses repeated members early, without reading parent zoos
    for backbone in grid.get("backbone", [zoo["backbone"]]):
        if backbone.startswith("package:"):  # a dry run finds it missing, as the run would
            cfg.resolve(backbone)
    if "scratch" in grid.get("backbone", [zoo["backbone"]]):
        _check_scratch(scratch, train["max_seq_len"])
    return cfg


def _check_search(table: dict[str, Any], grid: dict[str, list[Any]]) -> Search:
    """Parse [search] and hold its factors to the rules [grid]'s values follow."""
    search = parse_search(table)
    for key, dist in search.factors.items():
        if not _FACTOR_NAME.match(key):
            raise ConfigError(f"[search] factor name {key!r} must be a word of letters, digits "
                              "and '_' (it names a column of the zoo file)")
        if key in grid:
            raise ConfigError(f"[search] {key} is also in [grid]",
                              hint="vary a factor in one of the two")
        if key == "backbone":
            raise ConfigError("[search] cannot draw the backbone",
                              hint="list backbones in [grid]: the search runs in each")
        for v in dist.values:
            _check_factor_value(key, v)
        where = f"[search] {key} = {str(dist)!r}"
        if key in POSITIVE_FACTORS:
            integer = key != "learning_rate"
            if integer and dist.kind in ("uniform", "log_uniform"):
                raise ConfigError(f"{where}: {key} takes whole numbers",
                                  hint=f"use int_uniform or choice for {key}")
            for v in dist.values:
                check_type(f"each value of {where}", v, (int,) if integer else _NUMBER)
                if v <= 0:
                    raise ConfigError(f"{where}: {key} must be > 0")
        if key == "weight_decay":
            for v in dist.values:
                check_type(f"each value of {where}", v, _NUMBER)
                if v < 0:
                    raise ConfigError(f"{where}: weight_decay must be ≥ 0")
    return search


def _check_seed(where: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{where} must be in 0 to 2**32 - 1, got {value!r}")


def _check_factor_value(key: str, value: Any) -> None:
    """A grid value must be a plain number, string or boolean that the zoo file can hold."""
    if not isinstance(value, _FACTOR_TYPES):
        raise ConfigError(f"each of [grid] {key} must be a number, string or true/false, not "
                          f"{type(value).__name__} ({value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"[grid] {key} holds {value!r}: values must be finite")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ConfigError(f"[grid] {key} holds {value!r}, beyond a 64-bit integer")
    if isinstance(value, str) and "\0" in value:
        raise ConfigError(f"[grid] {key} holds a value with a NUL character")


def _check_scratch(scratch: dict[str, Any], max_seq_len: int) -> None:
    """Build the [scratch] model on the meta device: what transformers or torch would refuse
    (an unknown model type, a width the heads do not divide) fails here, before any file."""
    import torch
    from transformers import AutoModel

    from zooscope.kit.models import scratch_config

    try:
        config = scratch_config(scratch, int(scratch["vocab_size"]), max_seq_len)
        with torch.device("meta"):
            parameters = sum(p.numel() for p in AutoModel.from_config(config).parameters())
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0].rstrip(".")
        raise ConfigError(f"[scratch] does not describe a model transformers can build: {first}",
                          hint="check model_type, hidden_size (a multiple of "
                          "num_attention_heads) and the other sizes") from None
    # Training holds weights, gradients and two Adam moments: 16 bytes a parameter.
    needed = 16 * parameters
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise ConfigError(f"[scratch] describes a model of {parameters:,} parameters; training "
                          f"it needs {needed / 2**30:,.0f} GiB, more than this machine's "
                          f"{memory / 2**30:,.0f} GiB of memory",
                          hint="make the [scratch] sizes or [train] max_seq_len smaller")


def _check_positive(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise ConfigError(f"{where} must be a number, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{where} must be positive, got {value!r}")


def load_config(path: str | Path) -> ZooConfig:
    """Read and validate a config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no config file at {path}", hint="ready configs live in zoos/")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file")
    if not path.is_file():  # a device or pipe would be read without end
        raise ConfigError(f"{path} is not a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} holds {path.stat().st_size:,} bytes; a zoo config is at most "
                          f"{MAX_CONFIG_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    return parse_config(text, path.resolve())
