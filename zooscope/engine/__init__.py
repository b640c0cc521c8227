"""The training engine: builds a zoo from a config, one member and one epoch at a time.

``build`` runs a whole zoo (its processes and shards), ``loop`` trains one member,
``resume`` keeps what a stopped run needs to continue, ``stops`` handles Ctrl-C and a
full disk, and ``checks`` refuses bad output paths and devices before any file exists.
"""

from zooscope.engine.build import (
    BuildResult,
    build_zoo,
    final_metrics,
    member_costs,
    member_list,
    shard_members,
)
from zooscope.engine.stops import DiskFull, Interrupted
from zooscope.environment import slurm_shard

__all__ = ["BuildResult", "DiskFull", "Interrupted", "build_zoo", "final_metrics", "member_costs",
           "member_list", "shard_members", "slurm_shard"]
