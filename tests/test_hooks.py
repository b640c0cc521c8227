"""Every hook: documented with its exact signature, and exercised by a test of its own."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import zooscope
from zooscope import hookspecs, registry
from zooscope.analysis import AnalysisResult, Analyzer
from zooscope.config import parse_config
from zooscope.engine import build_zoo
from zooscope.kit.data import load_rows
from zooscope.record import TestSet
from zooscope.services.results import run_analysis

from .conftest import ROOT, TINY_CONFIG

HOOKS = sorted(n for n, _ in inspect.getmembers(hookspecs, inspect.isfunction)
               if n.startswith("zooscope_"))


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        signature = f"def {name}{inspect.signature(getattr(hookspecs, name))}".replace("'", "")
        assert signature in docs, f"docs/plugins.md lacks: {signature}"


def test_every_hook_has_a_test_and_a_docstring() -> None:
    tests = Path(__file__).read_text()
    for name in HOOKS:
        assert re.search(rf"def test_hook_{name}\(", tests), name
        assert getattr(hookspecs, name).__doc__


class Reviews:
    """A generator written outside zooscope with nothing but ``zooscope.*``: length of a
    synthetic review (short or long) as a two-class task, on the shared fine-tuning kit,
    with a config key of its own (``[data] long_words``: the words that make a review long)."""

    @staticmethod
    def make() -> object:
        import numpy as np
        import torch

        from zooscope.config import ConfigKey
        from zooscope.generator import Generator, TaskData
        from zooscope.kit.data import load_rows
        from zooscope.kit.finetune import cached_backbone, collate, finetune_setup
        from zooscope.kit.models import SequenceClassifier

        class ReviewLength(Generator):
            name = "review-length"
            description = "is a synthetic review longer than N words?"
            config_keys = {"data": {"long_words": ConfigKey(
                (int,), 6, "a review of more words than this is long", minimum=1)}}

            def prepare(self, cfg):  # type: ignore[no-untyped-def]
                texts, _, _ = load_rows("synthetic:sentiment:120", None, "label")
                long_words = self.setting(cfg, "data", "long_words")
                labels = np.array([int(len(t.split()) > long_words) for t in texts])
                splits = {s: {"texts": texts[a:b], "labels": torch.as_tensor(labels[a:b])}
                          for s, a, b in (("train", 0, 80), ("validation", 80, 100),
                                          ("test", 100, 120))}
                return TaskData(splits=splits, info={"source": "synthetic:sentiment:120"},
                                metric_columns=["validation_accuracy", "test_accuracy"],
                                test=TestSet(predictions={"kind": "class", "shape": [20]},
                                             labels=labels[100:120].astype(np.int32)))

            def setup(self, cfg, member, task):  # type: ignore[no-untyped-def]
                name = str(member.factors["backbone"])

                def encode(model, tok):  # type: ignore[no-untyped-def]
                    return {s: {"input_ids": tok(d["texts"])["input_ids"], "labels": d["labels"]}
                            for s, d in task.splits.items()}

                base, tok, encoded = cached_backbone(
                    cfg, task, name, lambda: task.splits["train"]["texts"], encode)
                return finetune_setup(
                    cfg, member, name, base, tok, encoded,
                    lambda backbone, hidden, dropout: SequenceClassifier(backbone, 2, hidden,
                                                                         dropout),
                    lambda train, idx: {"labels": train["labels"][idx]})

            def evaluate(self, cfg, setup, task, device):  # type: ignore[no-untyped-def]
                metrics, predictions = {}, None
                setup.model.eval()
                with torch.no_grad():
                    for split in ("validation", "test"):
                        data = setup.state["encoded"][split]
                        idx = list(range(len(data["input_ids"])))
                        _, logits = setup.model(**collate(data, idx, setup.state["pad"]))
                        preds = logits.argmax(-1)
                        metrics[f"{split}_accuracy"] = float((preds == data["labels"]).float()
                                                             .mean())
                        predictions = preds.numpy().astype(np.int32)
                setup.model.train()
                return metrics, predictions

        return ReviewLength()


def reviews_config(register_plugin) -> str:  # type: ignore[no-untyped-def]
    """Register the out-of-tree generator; the tiny config, pointed at it."""
    class Plugin:
        @zooscope.hookimpl
        def zooscope_register_generators(self, register):  # type: ignore[no-untyped-def]
            register(Reviews.make())

    register_plugin(Plugin(), "reviews-plugin")
    return TINY_CONFIG.replace('generator = "sst2"', 'generator = "review-length"')


def test_hook_zooscope_register_generators(register_plugin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A third-party generator built on zooscope's kit only (no built-in plugin
    imported) trains a zoo end to end, reading a config key it declares; the core checks
    that key like its own."""
    import ast

    source = inspect.getsource(Reviews)
    imported = [n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert imported and all(not m.startswith(("zooscope.generators", "zooscope.plugins"))
                            for m in imported)

    text = reviews_config(register_plugin).replace(
        "seeds = [0, 1]", "seeds = [0]").replace("learning_rate = [3e-4, 1e-3]",
                                                 "learning_rate = [1e-3]").replace(
        "epochs = 2", "epochs = 1")
    text = text.replace('source = "synthetic:sentiment:400"',
                        'source = "synthetic:sentiment:400"\nlong_words = 4')
    assert "long_words = 4" in text
    out = tmp_path / "reviews.h5"
    build_zoo(parse_config(text), out)
    texts, _, _ = load_rows("synthetic:sentiment:120", None, "label")
    with zooscope.open_zoo(out) as zoo:
        # the labels follow the config's own key (4 words), not its default (6)
        np.testing.assert_array_equal(zoo.test_labels(),
                                      [int(len(t.split()) > 4) for t in texts[100:120]])
        assert not np.array_equal(zoo.test_labels(),
                                  [int(len(t.split()) > 6) for t in texts[100:120]])
        assert zoo.info["generator"] == "review-length"
        assert [c.epoch for c in zoo.checkpoints()] == [0, 1]
        assert zoo.metric_columns == ["validation_accuracy", "test_accuracy"]
        assert zoo.predictions().shape == (2, 20)
        stored = zoo.checkpoints()[-1].metrics["test_accuracy"]
        labels = zoo.test_labels()
        assert stored == pytest.approx(float((zoo.predictions()[-1] == labels).mean()))


@pytest.mark.parametrize(("line", "message", "hint"), [
    ("long_word = 4", "unknown key 'long_word' in [data]", "did you mean 'long_words'?"),
    ('long_words = "four"', "[data] long_words must be an integer, not str ('four')", None),
    ("long_words = 0", "[data] long_words must be ≥ 1, got 0", None),
    ("stride = 64", "[data] stride is a setting of the squad generator; review-length does "
                    "not use it", "remove it, or use generator = 'squad'"),
])
def test_a_generator_key_is_checked_like_the_core_keys(register_plugin, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       line: str, message: str,
                                                       hint: str | None) -> None:
    text = reviews_config(register_plugin).replace(
        'source = "synthetic:sentiment:400"', f'source = "synthetic:sentiment:400"\n{line}')
    cfg = parse_config(text)  # the core alone cannot tell whose key it is
    out = tmp_path / "reviews.h5"
    with pytest.raises(zooscope.ConfigError) as caught:
        build_zoo(cfg, out)
    assert (caught.value.message, caught.value.hint) == (message, hint)
    assert not out.exists()


def test_hook_zooscope_register_stores(register_plugin, zoo_copy: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from zooscope.stores.hdf5 import HDF5Store

    class RenamedStore(HDF5Store):
        name = "renamed"
        suffixes = (".zoo",)

    class Plugin:
        @zooscope.hookimpl
        def zooscope_register_stores(self, register):  # type: ignore[no-untyped-def]
            register(RenamedStore())

    register_plugin(Plugin(), "renamed-store")
    renamed = zoo_copy.with_suffix(".zoo")
    zoo_copy.rename(renamed)
    with zooscope.open_zoo(renamed) as zoo:
        assert len(zoo.members()) == 4
    unknown = tmp_path / "x.unknown"
    unknown.touch()
    with pytest.raises(zooscope.ZooFileError, match="no store reads 'x.unknown'"):
        zooscope.open_zoo(unknown)


def test_hook_zooscope_register_analyzers(register_plugin, zoo_copy: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    class CountEpochs(Analyzer):
        name = "count-epochs"

        def analyze(self, zoo, options, selection):  # type: ignore[no-untyped-def]
            counts = [len(zoo.checkpoints(m)) for m in selection.members]
            return AnalysisResult(tables={"counts": {"member": [m.id for m in selection.members],
                                                     "checkpoints": counts}},
                                  summary=f"{sum(counts)} checkpoints")

    class Plugin:
        @zooscope.hookimpl
        def zooscope_register_analyzers(self, register):  # type: ignore[no-untyped-def]
            register(CountEpochs())

    register_plugin(Plugin(), "count-plugin")
    result = run_analysis(zoo_copy, registry.get_analyzer("count-epochs"), [], None, None,
                          tmp_path / "out", force=False)
    assert result.summary == "12 checkpoints"  # 4 members x epochs 0, 1, 2
    assert (tmp_path / "out" / "counts.csv").read_text().count("\n") == 5


class Recorder:
    def __init__(self) -> None:
        self.saved: list[tuple[str, int, dict]] = []
        self.finished: list[str] = []

    @zooscope.hookimpl
    def zooscope_checkpoint_saved(self, zoo, member, epoch, metrics):  # type: ignore[no-untyped-def]
        # The checkpoint is committed and readable when the hook runs.
        with zooscope.open_zoo(zoo) as z:
            stored = {c.epoch: c.metrics for c in z.checkpoints(member)}
        assert stored[epoch] == pytest.approx(metrics)
        self.saved.append((member.id, epoch, metrics))

    @zooscope.hookimpl
    def zooscope_member_finished(self, zoo, member):  # type: ignore[no-untyped-def]
        self.finished.append(member.id)


def _one_member_run(register_plugin, tmp_path: Path) -> tuple[Recorder, Path]:  # type: ignore[no-untyped-def]
    recorder = register_plugin(Recorder(), "recorder")
    text = TINY_CONFIG.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "learning_rate = [3e-4, 1e-3]", "learning_rate = [1e-3]")
    out = tmp_path / "one.h5"
    build_zoo(parse_config(text), out)
    return recorder, out


def test_hook_zooscope_checkpoint_saved(register_plugin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recorder, out = _one_member_run(register_plugin, tmp_path)
    assert [e for _, e, _ in recorder.saved] == [0, 1, 2]
    assert set(recorder.saved[0][2]) == {f"{s}_{m}" for s in ("train", "validation", "test")
                                         for m in ("loss", "accuracy")}


def test_hook_zooscope_member_finished(register_plugin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recorder, out = _one_member_run(register_plugin, tmp_path)
    with zooscope.open_zoo(out) as zoo:
        assert recorder.finished == [m.id for m in zoo.members()]
        assert zoo.members()[0].status == "complete"


def test_a_failing_observer_is_named(register_plugin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    class Broken:
        @zooscope.hookimpl
        def zooscope_checkpoint_saved(self, zoo, member, epoch, metrics):  # type: ignore[no-untyped-def]
            raise RuntimeError("disk full")

    register_plugin(Broken(), "broken-observer")
    text = TINY_CONFIG.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "learning_rate = [3e-4, 1e-3]", "learning_rate = [1e-3]")
    with pytest.raises(zooscope.PluginError, match="plugin 'broken-observer' failed in "
                       "zooscope_checkpoint_saved: RuntimeError: disk full"):
        build_zoo(parse_config(text), tmp_path / "b.h5")
    with zooscope.open_zoo(tmp_path / "b.h5") as zoo:  # the committed checkpoint is intact
        assert [c.epoch for c in zoo.checkpoints()] == [0]


def test_a_failing_analyzer_is_named_and_the_zoo_is_unchanged(register_plugin, zoo_copy: Path,
                                                              tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    class Broken(Analyzer):
        name = "broken"

        def analyze(self, zoo, options, selection):  # type: ignore[no-untyped-def]
            raise ZeroDivisionError("division by zero")

    class Plugin:
        @zooscope.hookimpl
        def zooscope_register_analyzers(self, register):  # type: ignore[no-untyped-def]
            register(Broken())

    register_plugin(Plugin(), "broken-analyzer")
    before = zoo_copy.read_bytes()
    with pytest.raises(zooscope.PluginError) as info:
        run_analysis(zoo_copy, registry.get_analyzer("broken"), [], None, None, tmp_path, False)
    assert str(info.value) == ("analyzer 'broken' (from tests.test_hooks) failed: "
                               "ZeroDivisionError: division by zero")
    assert zoo_copy.read_bytes() == before
    # Other analyzers still run on the same zoo.
    result = run_analysis(zoo_copy, registry.get_analyzer("agreement"), [], None, None,
                          tmp_path, False)
    assert result.stored
