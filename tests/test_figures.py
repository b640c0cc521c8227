"""Every built-in analyzer's figures, checked as drawn: tick labels that overlap, legends
over data, text outside the figure; and what each figure must show on a tiny zoo."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

import zooscope
from zooscope import registry
from zooscope.analysis import AnalysisResult, Selection
from zooscope.services.results import parse_members, resolve_inputs, run_analysis

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the non-interactive backend
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402


@pytest.fixture(scope="module")
def zoo(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny zoo holding a weightstats result, which predict reads."""
    path = tmp_path_factory.mktemp("figures") / "tiny.h5"
    shutil.copy(tiny_zoo, path)
    run_analysis(path, registry.get_analyzer("weightstats"), [], None, None,
                 path.parent / "out", force=False)
    return path


def analysis(zoo_path: Path, name: str, *sets: str, members: str | None = None,
             epochs: list[int] | None = None) -> AnalysisResult:
    """The analyzer's result as analyze returns it, its matplotlib figures drawn."""
    analyzer = registry.get_analyzer(name)
    with zooscope.open_zoo(zoo_path) as z:
        selection = Selection(parse_members(z, members), epochs,
                              inputs=resolve_inputs(z, analyzer))
        out = analyzer.analyze(z, analyzer.parse_options(list(sets)), selection)
    for fig in out.figures.values():
        assert isinstance(fig, plt.Figure), f"{name} returned {type(fig).__name__}, not a Figure"
        fig.canvas.draw()
    return out


def _overlap(a: Bbox, b: Bbox, slack: float = 0.5) -> bool:
    return (a.x0 < b.x1 - slack and b.x0 < a.x1 - slack and a.y0 < b.y1 - slack
            and b.y0 < a.y1 - slack)


def _texts(artists: list[Text]) -> list[Text]:
    return [t for t in artists if t.get_visible() and t.get_text().strip()]


def _undrawn_tick_labels(fig: Any) -> set[int]:
    """Tick labels matplotlib keeps for ticks outside the view, which it does not draw."""
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            span = (hi - lo) * 1e-9
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - span <= tick.get_loc() <= hi + span:
                    hidden |= {id(tick.label1), id(tick.label2)}
    return hidden


def _tick_labels(axis: Any, hidden: set[int]) -> list[Text]:
    return [t for t in _texts(axis.get_ticklabels()) if id(t) not in hidden]


def _data_extents(ax: Any) -> list[Bbox]:
    """Display boxes of what an axes plots: line points, bars and other rectangles,
    scatter points, images."""
    boxes: list[Bbox] = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = np.column_stack([np.asarray(line.get_xdata(), float),
                              np.asarray(line.get_ydata(), float)])
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) and not _is_axis_guide(line, ax):
            boxes += [Bbox.from_extents(x - 1, y - 1, x + 1, y + 1)
                      for x, y in line.get_transform().transform(xy)]
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_height():
            boxes.append(patch.get_window_extent())
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and coll.get_visible():
            for x, y in coll.get_offset_transform().transform(coll.get_offsets()):
                boxes.append(Bbox.from_extents(x - 2, y - 2, x + 2, y + 2))
    for image in ax.images:
        boxes.append(image.get_window_extent())
    return boxes


def _is_axis_guide(line: Line2D, ax: Any) -> bool:
    """axhline/axvline reference lines span the axes; a legend may sit on them."""
    return line.get_transform() != ax.transData and (
        line.get_transform().contains_branch(ax.get_xaxis_transform())
        or line.get_transform().contains_branch(ax.get_yaxis_transform()))


def layout_faults(fig: Any) -> list[str]:
    """What a reader would trip over, from the drawn figure's extents."""
    renderer = fig.canvas.get_renderer()
    faults = []
    page = fig.bbox
    hidden = _undrawn_tick_labels(fig)
    for text in _texts(fig.findobj(Text)):
        if id(text) in hidden:
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < page.x0 - 1 or box.y0 < page.y0 - 1 or box.x1 > page.x1 + 1 \
                or box.y1 > page.y1 + 1:
            faults.append(f"text {text.get_text()!r} outside the figure")
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = _tick_labels(axis, hidden)
            for a, b in itertools.combinations(labels, 2):
                if _overlap(a.get_window_extent(renderer), b.get_window_extent(renderer)):
                    faults.append(f"tick labels {a.get_text()!r} and {b.get_text()!r} overlap")
    legends = [lg for ax in fig.axes if (lg := ax.get_legend()) is not None] + fig.legends
    for legend in legends:
        assert isinstance(legend, Legend)
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if any(_overlap(box, d, slack=0) for d in _data_extents(ax)):
                faults.append(f"legend {[t.get_text() for t in legend.get_texts()]} covers "
                              "plotted data")
    return faults


def check(figs: dict[str, Any]) -> None:
    try:
        for name, fig in figs.items():
            assert layout_faults(fig) == [], name
    finally:
        for fig in figs.values():
            plt.close(fig)


def texts(fig: Any) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def test_predict_figure(zoo: Path) -> None:
    """Regression and classification apart, a colour per model, chance as a line."""
    out = analysis(zoo, "predict", "folds=2")
    fig = out.figures["scores"]
    scores = out.tables["scores"]
    bars = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == sum(m != "chance" for m in scores["model"])  # chance is no bar
    assert len({tuple(b.get_facecolor()) for b in bars}) >= 2
    assert all(ax.get_ylabel() for ax in fig.axes)
    assert any("chance" in t for t in texts(fig))
    # The factors panel draws the classification accuracies, not the factors' regressions.
    factors_ax = next(ax for ax in fig.axes if "classifying" in ax.get_title())
    heights = sorted(round(p.get_height(), 9) for p in factors_ax.patches)
    accuracies = sorted(round(v, 9) for v, mo, me in zip(scores["value"], scores["model"],
                                                         scores["metric"], strict=True)
                        if me == "accuracy" and mo != "chance")
    assert heights == accuracies
    check(out.figures)


def test_sparsify_figure(zoo: Path) -> None:
    """Members by the factors that vary; scope and epoch in the title."""
    out = analysis(zoo, "sparsify", "sparsities=0,0.5", members="seed=0")
    fig = out.figures["sparsity_curves"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["learning_rate=0.0003", "learning_rate=0.001"]  # seed is constant here
    assert "magnitude pruning (global), epoch 2" in fig.axes[0].get_title()
    check(out.figures)


def test_agreement_figure(zoo: Path) -> None:
    """A panel per selected epoch, factors that vary as labels, values in the cells."""
    out = analysis(zoo, "agreement", epochs=[0, 2])
    fig = out.figures["agreement_heatmap"]
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["epoch 0", "epoch 2"]
    labels = [t.get_text() for t in panels[0].get_yticklabels()]
    assert labels and all("backbone" not in t and "learning_rate=" in t for t in labels)
    assert "backbone=scratch" in fig.get_suptitle()
    matrix = out.tables["matrix"]
    cells = [t.get_text() for t in panels[1].texts]
    assert len(cells) == len(matrix["member"]) ** 2
    assert cells[1] == f"{matrix[matrix['member'][1]][0]:.2f}"  # row 0, column 1
    check(out.figures)


def test_weightstats_figures(zoo: Path) -> None:
    """Spectral metrics computed are spectral metrics plotted, matrices' kinds only."""
    out = analysis(zoo, "weightstats", "spectral=true")
    assert set(out.figures) == {"trajectories", "alpha", "stable_rank"}
    titles = {ax.get_title() for ax in out.figures["alpha"].axes if ax.get_visible()}
    assert "layernorm" not in titles and "attention.q" in titles
    check(out.figures)


def test_backbones_figure(zoo: Path) -> None:
    """The chosen configuration under each backbone; the legend on no bar."""
    out = analysis(zoo, "backbones")
    labels = [t.get_text() for t in out.figures["backbones"].axes[0].get_xticklabels()]
    best = out.tables["best"]
    assert f"learning_rate={best['learning_rate'][0]}" in labels[0]
    check(out.figures)


@pytest.mark.slow
def test_umap_figure(zoo: Path) -> None:
    """Identical weights (each seed's epoch 0 is shared by both learning rates) land on
    one point; integer epochs get a legend, not a colour bar; members are labelled."""
    out = analysis(zoo, "umap", "neighbors=5")
    coords = out.tables["coordinates"]
    with zooscope.open_zoo(zoo) as z:
        cps = {(c.member, c.epoch): c for c in z.checkpoints()}
        names = [n for n in z.tensor_names() if n.endswith("weight")]
        flat = [np.concatenate([z.tensor(n, [cps[(m, e)]]).reshape(-1) for n in names])
                for m, e in zip(coords["member"], coords["epoch"], strict=True)]
    same = 0
    for i, j in itertools.combinations(range(len(flat)), 2):
        if np.array_equal(flat[i], flat[j]):
            same += 1
            assert (coords["x"][i], coords["y"][i]) == (coords["x"][j], coords["y"][j])
    assert same >= 2
    fig = out.figures["umap"]
    assert len(fig.axes) == 1  # no colour bar
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["0", "1", "2"]
    assert sum("learning_rate=" in t.get_text() for t in fig.axes[0].texts) == 4
    check(out.figures)


def test_sparsify_figure_colours_many_members_by_factor() -> None:
    """Beyond 12 members a colour per member would repeat: one colour per learning rate,
    one legend entry each, and the seed never."""
    from zooscope.plugins.sparsify import _plot
    from zooscope.zoo import Member

    members = [Member(f"m{i}", {"learning_rate": lr, "seed": seed})
               for i, (lr, seed) in enumerate((lr, s) for lr in (1e-5, 2e-5, 3e-5)
                                              for s in range(5))]
    curves: dict[str, list[Any]] = {"member": [], "epoch": [], "sparsity": [], "acc": []}
    for m in members:
        for level in (0.0, 0.5):
            curves["member"].append(m.id)
            curves["epoch"].append(2)
            curves["sparsity"].append(level)
            curves["acc"].append(0.9 - level * m.factors["learning_rate"] * 1e4)
    fig = _plot(curves, "acc", members, "global")
    fig.canvas.draw()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["learning_rate=1e-05", "learning_rate=2e-05", "learning_rate=3e-05"]
    colours = {tuple(line.get_color()) for line in fig.axes[0].get_lines()}
    assert len(colours) == 3
    check({"sparsity_curves": fig})
