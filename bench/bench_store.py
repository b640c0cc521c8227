"""The zoo store against safetensors and torch.save on BERT-shaped state dicts.

- write throughput and file size: a bert-base state dict (BertConfig(), no hub);
- reading one tensor across 100 checkpoints: one zoo vs 100 safetensors files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

from zooscope.access import open_zoo
from zooscope.record import ZooRecord
from zooscope.stores.hdf5 import HDF5Store
from zooscope.zoo import Architecture, Member


def state_dict(config: BertConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in BertModel(config).state_dict().items()}


def new_zoo(path: Path, sd: dict[str, torch.Tensor], members: int) -> tuple:
    ms = [Member.from_factors({"seed": i}) for i in range(members)]
    header = ZooRecord(name="bench", config_text="", generator="bench", generator_version="1",
                       metric_columns=["test_loss"])
    arch = Architecture(key="bert", files={"config.json": b"{}"},
                        shapes={k: tuple(v.shape) for k, v in sd.items()},
                        dtypes={k: str(v.dtype).removeprefix("torch.") for k, v in sd.items()
                                if not v.is_floating_point()})
    w = HDF5Store().create(path, header, ms)
    w.ensure_architecture(arch)
    for m in ms:
        w.start_member(m, arch)
    return w, ms


def noisy_zoo(path: Path, checkpoints: int) -> dict[str, torch.Tensor]:
    """A zoo of a 2-layer BERT (hidden 256), 4 members, ``checkpoints`` checkpoints in
    all: each the same weights plus fresh noise, so no row is stored once for two. Its
    state dict, as a template."""
    config = BertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=1024)
    sd = state_dict(config, 0)
    rng = np.random.default_rng(0)
    w, ms = new_zoo(path, sd, 4)
    for i in range(checkpoints):
        noisy = {k: v + torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32))
                 if v.is_floating_point() else v for k, v in sd.items()}
        w.write_checkpoint(ms[i % 4], i // 4, i, 0.0, noisy, {}, None)
    w.close()
    return sd


def write_figures(sds: list[dict[str, torch.Tensor]], where: Path, place: str) -> None:
    nbytes = sum(v.numel() * v.element_size() for v in sds[0].values())

    def zoo_write() -> float:
        w, ms = new_zoo(where / "w.h5", sds[0], 2)
        w.write_checkpoint(ms[0], 0, 0, 0.0, sds[0], {}, None)
        os.sync()
        start = time.perf_counter()
        w.write_checkpoint(ms[1], 0, 0, 0.0, sds[1], {}, None)
        took = time.perf_counter() - start
        w.close()
        sizes["zoo"] = (where / "w.h5").stat().st_size / 2
        return took

    def timed(save: object, target: Path) -> float:
        os.sync()
        start = time.perf_counter()
        save(sds[1], target)  # type: ignore[operator]
        took = time.perf_counter() - start
        sizes[target.suffix] = target.stat().st_size
        return took

    def hdf5_floor() -> float:
        """What HDF5 alone costs for the same rows: direct chunk writes into datasets laid
        out as the zoo's, without digests (deduplication) or the commit."""
        import h5py

        from zooscope.stores.h5writer import ALIGNMENT

        arrays = {k: v.numpy() for k, v in sds[1].items()}
        with h5py.File(where / "w.floor", "w", libver="latest", **ALIGNMENT) as f:
            datasets = [f.create_dataset(k, shape=(0, *v.shape), maxshape=(None, *v.shape),
                                         dtype=v.dtype, chunks=(1, *v.shape) if v.ndim else (1,))
                        for k, v in arrays.items()]
            f.flush()
            os.sync()
            start = time.perf_counter()
            for ds, v in zip(datasets, arrays.values(), strict=True):
                ds.id.set_extent((1, *v.shape))
                if v.ndim:
                    ds.id.write_direct_chunk((0,) * (v.ndim + 1), v)
                else:
                    ds[0] = v
            f.flush()
            return time.perf_counter() - start

    writers = {
        "zoo": zoo_write,
        "safetensors": lambda: timed(lambda sd, t: save_file(sd, str(t)), where / "w.safetensors"),
        "torch.save": lambda: timed(torch.save, where / "w.pt"),
        "hdf5": hdf5_floor,
    }
    sizes: dict[str, float] = {}
    times: dict[str, list[float]] = {k: [] for k in writers}
    for rep in range(9):
        order = list(writers)[rep % 4:] + list(writers)[: rep % 4]
        for k in order:
            times[k].append(writers[k]())
            for leftover in where.glob("w.*"):
                leftover.unlink()
    zoo_s, st_s, pt_s, floor_s = (min(times[k]) for k in writers)
    print(f"write one checkpoint, {place} (best of 9): zoo {nbytes / zoo_s / 1e6:.0f} MB/s, "
          f"safetensors {nbytes / st_s / 1e6:.0f} MB/s, torch.save {nbytes / pt_s / 1e6:.0f} MB/s")
    print(f"  ratio zoo/safetensors {st_s / zoo_s:.2f}x (goal ≥ 1.0x), "
          f"zoo/torch.save {pt_s / zoo_s:.2f}x")
    print(f"  HDF5's own floor (direct chunk writes, no digest or commit) {nbytes / floor_s / 1e6:.0f} "
          f"MB/s = {st_s / floor_s:.2f}x safetensors; the zoo writer reaches "
          f"{floor_s / zoo_s:.2f}x of it")
    if place == "disk":
        print(f"file size per checkpoint: zoo {sizes['zoo'] / 1e6:.1f} MB, safetensors "
              f"{sizes['.safetensors'] / 1e6:.1f} MB, ratio "
              f"{sizes['zoo'] / sizes['.safetensors']:.3f}x (goal ≤ 1.0x, lossless)")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="zooscope-bench-"))
    try:
        base = BertConfig()
        sds = [state_dict(base, s) for s in range(2)]
        nbytes = sum(v.numel() * v.element_size() for v in sds[0].values())
        print(f"bert-base state dict: {len(sds[0])} tensors, {nbytes / 1e6:.0f} MB")

        # Each write starts with no dirty pages (os.sync() first) into a file that is
        # deleted after: otherwise the kernel's writeback of the previous writes decides
        # the figure. The zoo writes its second checkpoint (the first opens the
        # datasets, once per writer); the writers take turns going first. Measured on
        # disk (the page cache) and, where /dev/shm exists, in memory, where nothing
        # but the formats' own costs remain.
        places = [("disk", tmp)]
        if Path("/dev/shm").is_dir():
            places.append(("memory", Path(tempfile.mkdtemp(prefix="zooscope-bench-", dir="/dev/shm"))))
        for place, where in places:
            try:
                write_figures(sds, where, place)
            finally:
                if where != tmp:
                    shutil.rmtree(where, ignore_errors=True)

        # One tensor across 100 checkpoints (a smaller BERT keeps the files to ~2 GB).
        small = BertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=1024)
        sd = state_dict(small, 0)
        rng = np.random.default_rng(0)
        w, ms = new_zoo(tmp / "r.h5", sd, 10)
        for i in range(100):
            noisy = {k: v + torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32))
                     if v.is_floating_point() else v for k, v in sd.items()}
            w.write_checkpoint(ms[i // 10], i % 10, i, 0.0, noisy, {}, None)
            save_file(noisy, str(tmp / f"r{i}.safetensors"))
        w.close()
        name = "encoder.layer.1.attention.self.query.weight"
        opens, reads, st_r = [], [], []
        for _ in range(7):
            start = time.perf_counter()
            zoo = open_zoo(tmp / "r.h5")
            opened = time.perf_counter()
            stack = zoo.tensor(name)
            reads.append(time.perf_counter() - opened)
            opens.append(opened - start)
            zoo.close()
            start = time.perf_counter()
            tensors = []
            for i in range(100):
                with safe_open(str(tmp / f"r{i}.safetensors"), "pt") as f:
                    tensors.append(f.get_tensor(name))
            st_r.append(time.perf_counter() - start)
        assert np.array_equal(stack, torch.stack(tensors).numpy())
        # The other layout considered: a group per checkpoint, a dataset per tensor.
        import h5py

        with h5py.File(tmp / "groups.h5", "w") as f:
            for i in range(100):
                with safe_open(str(tmp / f"r{i}.safetensors"), "np") as src:
                    g = f.create_group(f"c{i}")
                    for key in src.keys():  # noqa: SIM118 - safe_open has no __iter__
                        g.create_dataset(key, data=src.get_tensor(key))
        grp = []
        for _ in range(7):
            start = time.perf_counter()
            with h5py.File(tmp / "groups.h5", "r") as f:
                out = np.stack([f[f"c{i}"][name][()] for i in range(100)])
            grp.append(time.perf_counter() - start)
        assert np.array_equal(out, stack)
        print(f"  layout check: group per checkpoint {min(grp) * 1e3:.1f} ms for the same read "
              f"(chosen layout, one dataset per tensor: {(min(opens) + min(reads)) * 1e3:.1f} ms)")
        op, rd, sr = min(opens), min(reads), min(st_r)
        print(f"read {name} across 100 checkpoints (best of 7): zoo {(op + rd) * 1e3:.1f} ms "
              f"= open {op * 1e3:.1f} + read {rd * 1e3:.1f}; safe_open x100 {sr * 1e3:.1f} ms")
        print(f"  ratio {sr / (op + rd):.1f}x faster with the open, {sr / rd:.1f}x for an open zoo "
              f"(goal ≥ 3x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
