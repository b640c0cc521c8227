"""Settings read from environment variables, checked as config values are: a bad value
is one error naming the variable, found before any work is done."""

from __future__ import annotations

import math
import os

from zooscope.errors import ConfigError


def env_seconds(name: str, default: float, *, zero: bool = True, most: float = 86400.0) -> float:
    """Seconds from the variable ``name`` (``default`` when unset or empty): a finite
    number from 0 (or above 0 where ``zero`` is false) up to ``most``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    low_ok = value >= 0 if zero else value > 0
    if not (math.isfinite(value) and low_ok and value <= most):
        lowest = "0" if zero else "more than 0"
        raise ConfigError(f"{name}={text!r} is not a number of seconds from {lowest} to "
                          f"{most:g}", hint=f"for example {name}=60, or unset it for "
                                            f"{default:g} s")
    return value


#: Seconds to wait on the network for a connection or the next bytes of an answer.
NETWORK_TIMEOUT = 30.0
NETWORK_TIMEOUT_VARIABLE = "ZOOSCOPE_NETWORK_TIMEOUT"


def network_timeout_setting() -> float:
    return env_seconds(NETWORK_TIMEOUT_VARIABLE, NETWORK_TIMEOUT, zero=False)


#: Seconds an analysis waits for another one storing its result (``ZOOSCOPE_RESULTS_WAIT``).
RESULTS_WAIT = 60.0


def results_wait() -> float:
    return env_seconds("ZOOSCOPE_RESULTS_WAIT", RESULTS_WAIT)


#: The most shards a zoo is split into (``--shard I/N``, a SLURM array's task count).
MAX_SHARDS = 100_000


def world_size(launched: bool = True) -> int:
    """The process count a launcher (torchrun, ``accelerate launch``) set in
    ``WORLD_SIZE``: 1 where none did; a value no launcher sets is an error, and so is
    more than one process without the variables a launcher sets beside it (unless
    ``launched`` is false: only the value is checked)."""
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return 1
    if not text.isdigit() or not 1 <= int(text) <= 1 << 20:
        raise ConfigError(f"WORLD_SIZE={text!r} is not a process count",
                          hint="launchers (torchrun, accelerate launch) set it; unset it to "
                               "run in one process")
    size = int(text)
    if size > 1 and launched:
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise ConfigError(f"WORLD_SIZE={size} but {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not set: no launcher "
                              "started this process",
                              hint="start it with torchrun or accelerate launch, or unset "
                                   "WORLD_SIZE to run in one process")
    return size


def endpoint(name: str, default: str) -> tuple[str, str, int]:
    """An http(s) endpoint from the variable ``name``: (scheme, host, port)."""
    from urllib.parse import urlsplit

    text = os.environ.get(name, "").strip() or default
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={text!r} is not an http(s) URL with a host and a valid "
                          "port", hint=f"for example {name}={default}, or unset it")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def slurm_shard() -> tuple[int, int] | None:
    """This task's shard of a SLURM job array (``SLURM_ARRAY_TASK_ID`` counted from
    ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``, of
    ``SLURM_ARRAY_TASK_COUNT``), or None outside an array."""
    env = os.environ
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        low = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
    except ValueError:
        raise ConfigError("the SLURM_ARRAY_TASK_* variables are not integers") from None
    if not 1 <= count <= MAX_SHARDS:
        raise ConfigError(f"SLURM_ARRAY_TASK_COUNT={count} is not a task count from 1 to "
                          f"{MAX_SHARDS:,}")
    index, off = divmod(task - low, max(step, 1))
    if off or not 0 <= index < count:
        raise ConfigError(f"SLURM_ARRAY_TASK_ID={task} is not one of {count} array tasks "
                          f"from {low} in steps of {step}",
                          hint="submit with a plain range, e.g. sbatch --array=0-5, or give "
                               "--shard I/N")
    return index, count


_HUB_ANSWERED: dict[tuple[str, int], bool] = {}


def hub_offline(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (HF_HUB_OFFLINE, or no answer to one
    connection, asked once per process), else None. Offline, HF_HUB_OFFLINE is set for
    this process, so transformers reads its cache at once instead of retrying every
    download for ~20 s per file."""
    import socket
    import sys

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    _, host, port = endpoint("HF_ENDPOINT", "https://huggingface.co")
    if (host, port) not in _HUB_ANSWERED:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _HUB_ANSWERED[(host, port)] = True
        except OSError:
            _HUB_ANSWERED[(host, port)] = False
    if _HUB_ANSWERED[(host, port)]:
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the variable before we set it
        constants.HF_HUB_OFFLINE = True
    return f"{host} does not answer"


def check_environment() -> None:
    """Every zooscope setting in the environment, and those of libraries that fail
    obscurely on a bad value (``HF_ENDPOINT``), checked before a command does anything."""
    if os.environ.get("HF_ENDPOINT", "").strip():
        endpoint("HF_ENDPOINT", "https://huggingface.co")
    network_timeout_setting()
    results_wait()
    world_size(launched=False)


__all__ = ["MAX_SHARDS", "NETWORK_TIMEOUT", "NETWORK_TIMEOUT_VARIABLE", "RESULTS_WAIT",
           "check_environment", "endpoint", "env_seconds", "network_timeout_setting",
           "results_wait", "slurm_shard", "world_size", "hub_offline"]
