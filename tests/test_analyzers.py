"""The built-in analyzers, each number checked against an independent computation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import cohen_kappa_score

import zooscope
from zooscope import registry
from zooscope.services.results import run_analysis

from .conftest import run_cli


def analyze(zoo: Path, name: str, tmp: Path, *sets: str, force: bool = False,
            epochs: str | None = None, members: str | None = None):  # type: ignore[no-untyped-def]
    return run_analysis(zoo, registry.get_analyzer(name), list(sets), members, epochs,
                        tmp / name, force=force)


def test_agreement_and_kappa_match_sklearn(zoo_copy: Path, tmp_path: Path) -> None:
    from zooscope.plugins.agreement import agreement_matrix

    result = analyze(zoo_copy, "agreement", tmp_path)
    with zooscope.open_zoo(zoo_copy) as zoo:
        cps = zoo.checkpoints(epochs=[2])
        preds = zoo.predictions(cps)
        labels = zoo.test_labels()
    pairs = result.tables["pairs"]
    at = [i for i, e in enumerate(pairs["epoch"]) if e == 2]
    index = {c.member: i for i, c in enumerate(cps)}
    for i in at:
        a, b = preds[index[pairs["member_a"][i]]], preds[index[pairs["member_b"][i]]]
        assert pairs["agreement"][i] == pytest.approx(np.mean(a == b))
        assert pairs["kappa"][i] == pytest.approx(sklearn_kappa(a, b), abs=1e-9, nan_ok=True)
        assert pairs["error_a"][i] == pytest.approx(np.mean(a != labels))
    # Random predictions: agreement matrix against a plain loop.
    rng = np.random.default_rng(0)
    p = rng.integers(0, 3, size=(6, 500))
    agree, kappa = agreement_matrix(p, 3)
    for i in range(6):
        for j in range(6):
            assert agree[i, j] == pytest.approx(np.mean(p[i] == p[j]))
            assert kappa[i, j] == pytest.approx(cohen_kappa_score(p[i], p[j]))
    # CSV and heatmap on disk, result stored in the zoo and reused.
    with open(tmp_path / "agreement" / "matrix.csv") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 5 and rows[0][0] == "member"
    assert (tmp_path / "agreement" / "agreement_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert result.stored and not result.reused
    again = analyze(zoo_copy, "agreement", tmp_path)
    assert again.reused and again.summary == result.summary
    assert analyze(zoo_copy, "agreement", tmp_path, force=True).reused is False


def test_agreement_intervals_resample_seeds_and_examples(zoo_copy: Path, tmp_path: Path) -> None:
    """Each group's interval of mean agreement and test error, and the seed-only pairs'
    disagreement interval, against a replicate-by-replicate resampling in plain numpy:
    a pair counts as often as both its seeds are drawn, examples as often as drawn."""
    result = analyze(zoo_copy, "agreement", tmp_path, "bootstrap=300", "bootstrap_seed=4",
                     epochs="2")
    groups, pairs, seed_pairs = (result.tables[k] for k in ("groups", "pairs", "seed_pairs"))
    with zooscope.open_zoo(zoo_copy) as zoo:
        seed = {m.id: str(m.factors["seed"]) for m in zoo.members()}
        cps = zoo.checkpoints(epochs=[2])
        preds = dict(zip([c.member for c in cps], zoo.predictions(cps), strict=True))
        labels = zoo.test_labels()
    seeds = sorted(set(seed.values()))
    rng = np.random.default_rng(4)
    examples = rng.integers(0, len(labels), size=(300, len(labels)))
    drawn = rng.integers(0, len(seeds), size=(300, len(seeds)))

    def spans(chosen: list[int]) -> tuple[float, ...]:
        agree, error = [], []
        for b in range(300):
            count = np.bincount(drawn[b], minlength=len(seeds))
            x = examples[b]
            w = [count[seeds.index(seed[pairs["member_a"][k]])]
                 * count[seeds.index(seed[pairs["member_b"][k]])] for k in chosen]
            if sum(w) == 0:
                continue
            a = [np.mean(preds[pairs["member_a"][k]][x] == preds[pairs["member_b"][k]][x])
                 for k in chosen]
            e = [(np.mean(preds[pairs["member_a"][k]][x] != labels[x])
                  + np.mean(preds[pairs["member_b"][k]][x] != labels[x])) / 2 for k in chosen]
            agree.append(np.average(a, weights=w))
            error.append(np.average(e, weights=w))
        return (*np.percentile(agree, [2.5, 97.5]), *np.percentile(error, [2.5, 97.5]))

    assert set(groups["epoch"]) == {2}
    for g, diff in enumerate(groups["differ_in"]):
        expected = spans([k for k, d in enumerate(pairs["differ_in"]) if d == diff])
        got = tuple(groups[c][g] for c in ("agreement_low", "agreement_high", "error_low",
                                           "error_high"))
        assert got == pytest.approx(expected), diff
    for r, lr in enumerate(seed_pairs["learning_rate"]):
        chosen = [k for k, d in enumerate(pairs["differ_in"]) if d == "seed"
                  and zoo_lr(zoo_copy, pairs["member_a"][k]) == lr]
        low, high, err_low, err_high = spans(chosen)
        assert (seed_pairs["disagreement_low"][r], seed_pairs["disagreement_high"][r],
                seed_pairs["error_low"][r], seed_pairs["error_high"][r]) == \
            pytest.approx((1 - high, 1 - low, err_low, err_high))
    assert "multi-bootstrap over seeds and test examples (300 replicates)" in result.summary
    (tmp_path / "none").mkdir()
    none = analyze(zoo_copy, "agreement", tmp_path / "none", "bootstrap=0", epochs="2")
    assert "agreement_low" not in none.tables["groups"]
    assert "disagreement_low" not in none.tables["seed_pairs"]


def zoo_lr(path: Path, member: str) -> float:
    with zooscope.open_zoo(path) as zoo:
        return zoo.member(member).factors["learning_rate"]


def test_seed_only_pairs_per_configuration(zoo_copy: Path, tmp_path: Path) -> None:
    """The generalisation-disagreement table: for each learning rate and epoch, the two
    seeds' disagreement and their mean test error, recomputed from the predictions."""
    result = analyze(zoo_copy, "agreement", tmp_path)
    table = result.tables["seed_pairs"]
    with zooscope.open_zoo(zoo_copy) as zoo:
        labels = zoo.test_labels()
        lr_of = {m.id: m.factors["learning_rate"] for m in zoo.members()}
        expected = {}
        for epoch in (0, 1, 2):
            for lr in (3e-4, 1e-3):
                cps = [c for c in zoo.checkpoints(epochs=[epoch]) if lr_of[c.member] == lr]
                a, b = zoo.predictions(cps)
                expected[(epoch, f"learning_rate={lr}")] = (
                    np.mean(a != b), (np.mean(a != labels) + np.mean(b != labels)) / 2)
    rows = {(e, c): i for i, (e, c) in enumerate(zip(table["epoch"], table["configuration"],
                                                      strict=True))}
    assert set(rows) == set(expected)
    for key, (disagreement, error) in expected.items():
        i = rows[key]
        assert table["pairs"][i] == 1
        assert table["learning_rate"][i] == float(key[1].split("=")[1])
        assert table["mean_disagreement"][i] == pytest.approx(disagreement)
        assert table["mean_test_error"][i] == pytest.approx(error)
        assert table["disagreement_minus_error"][i] == pytest.approx(disagreement - error)
    with open(tmp_path / "agreement" / "seed_pairs.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(expected)
    png = tmp_path / "agreement" / "disagreement_vs_error.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def sklearn_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """sklearn's kappa, NaN (with its warnings silenced) where it is 0/0."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cohen_kappa_score(a, b))


def test_undefined_kappa_is_nan_and_left_out_of_group_means(zoo_copy: Path, tmp_path: Path) -> None:
    """The tiny zoo predicts one class everywhere at epoch 0, and three members predict
    the same single class at epoch 2: those pairs' kappa is 0/0, as sklearn says."""
    from zooscope.plugins.agreement import agreement_matrix

    constant = np.array([[1] * 9, [1] * 9, [0] * 9, [0, 1, 1, 0, 1, 0, 0, 1, 1]])
    _, kappa = agreement_matrix(constant, 2)
    for i in range(4):
        for j in range(4):
            assert kappa[i, j] == pytest.approx(sklearn_kappa(constant[i], constant[j]),
                                                nan_ok=True), (i, j)
    assert np.isnan(kappa[0, 1]) and kappa[0, 2] == 0.0

    result = analyze(zoo_copy, "agreement", tmp_path)
    with zooscope.open_zoo(zoo_copy) as zoo:
        preds = {(c.member, c.epoch): p for c, p in
                 zip(zoo.checkpoints(), zoo.predictions(zoo.checkpoints()), strict=True)}
    pairs, groups = result.tables["pairs"], result.tables["groups"]
    expected: dict[tuple[int, str], list[float]] = {}
    for i, epoch in enumerate(pairs["epoch"]):
        k = sklearn_kappa(preds[(pairs["member_a"][i], epoch)], preds[(pairs["member_b"][i], epoch)])
        assert pairs["kappa"][i] == pytest.approx(k, abs=1e-9, nan_ok=True)
        expected.setdefault((epoch, pairs["differ_in"][i]), []).append(k)
    undefined_somewhere = 0
    for i, epoch in enumerate(groups["epoch"]):
        ks = np.array(expected[(epoch, groups["differ_in"][i])])
        undefined = int(np.isnan(ks).sum())
        undefined_somewhere += undefined
        assert groups["kappa_undefined"][i] == undefined
        want = np.nanmean(ks) if undefined < len(ks) else np.nan
        assert groups["mean_kappa"][i] == pytest.approx(want, nan_ok=True)
    assert undefined_somewhere > 0
    assert "3 of 6 pairs left out" in result.summary  # epoch 2: three members predict class 1
    # The CSV keeps NaN as NaN, not as a perfect 1.0.
    with open(tmp_path / "agreement" / "pairs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["kappa"] == "nan" for r in rows) == sum(np.isnan(pairs["kappa"]))


def test_weightstats_match_numpy_and_scipy(zoo_copy: Path, tmp_path: Path) -> None:
    result = analyze(zoo_copy, "weightstats", tmp_path, "tensors=attention.self.query.weight|head",
                     "spectral=true")
    table = result.tables["stats"]
    with zooscope.open_zoo(zoo_copy) as zoo:
        member = zoo.members()[1]
        name = "backbone.encoder.layer.0.attention.self.query.weight"
        w = zoo.state_dict(member, 2)[name].double().numpy()
        w0 = zoo.state_dict(member, 0)[name].double().numpy()
    i = next(k for k in range(len(table["tensor"])) if table["tensor"][k] == name
             and table["member"][k] == member.id and table["epoch"][k] == 2)
    x = w.reshape(-1)
    assert table["kind"][i] == "attention.q" and table["block"][i] == 0
    assert table["mean"][i] == pytest.approx(x.mean())
    assert table["std"][i] == pytest.approx(x.std())
    assert table["p25"][i] == pytest.approx(np.percentile(x, 25))
    assert table["p99"][i] == pytest.approx(np.percentile(x, 99))
    assert table["l1"][i] == pytest.approx(np.abs(x).sum())
    assert table["l2"][i] == pytest.approx(np.linalg.norm(x))
    assert table["linf"][i] == pytest.approx(np.abs(x).max())
    assert table["skew"][i] == pytest.approx(stats.skew(x))
    assert table["kurtosis"][i] == pytest.approx(stats.kurtosis(x))
    assert table["near_zero"][i] == pytest.approx(np.mean(np.abs(x) < 1e-3))
    assert table["drift_l2"][i] == pytest.approx(np.linalg.norm(x - w0.reshape(-1))
                                                 / np.linalg.norm(w0))
    sv = np.linalg.svd(w, compute_uv=False)
    assert table["spectral_norm"][i] == pytest.approx(sv[0] ** 2, rel=1e-5)
    assert table["stable_rank"][i] == pytest.approx((sv ** 2).sum() / sv[0] ** 2, rel=1e-5)
    assert (tmp_path / "weightstats" / "trajectories.png").exists()


def test_weightstats_spectral_columns_sit_on_their_own_rows(zoo_copy: Path, tmp_path: Path) -> None:
    """Every row of the table against an SVD of that very tensor at that checkpoint:
    matrices carry their own spectral metrics, vectors (LayerNorm, biases) carry none."""
    from zooscope.plugins.weightstats import power_law_alpha

    table = analyze(zoo_copy, "weightstats", tmp_path, "spectral=true").tables["stats"]
    matrices = vectors = 0
    with zooscope.open_zoo(zoo_copy) as zoo:
        cps = {(c.member, c.epoch): c for c in zoo.checkpoints()}
        for i, name in enumerate(table["tensor"]):
            w = zoo.tensor(name, [cps[(table["member"][i], table["epoch"][i])]])[0]
            w = w.astype(np.float64)
            row = {k: table[k][i] for k in ("spectral_norm", "log_spectral_norm", "stable_rank",
                                            "log_norm", "alpha", "alpha_weighted")}
            if w.ndim != 2 or min(w.shape) < 2:
                assert all(np.isnan(v) for v in row.values()), (name, row)
                vectors += 1
                continue
            evals = np.linalg.svd(w, compute_uv=False) ** 2
            alpha = power_law_alpha(evals)
            assert row["spectral_norm"] == pytest.approx(evals[0], rel=1e-5), name
            assert row["log_spectral_norm"] == pytest.approx(np.log10(evals[0]), abs=1e-5)
            assert row["stable_rank"] == pytest.approx(evals.sum() / evals[0], rel=1e-5)
            assert row["log_norm"] == pytest.approx(np.log10(evals.sum()), abs=1e-5)
            assert row["alpha"] == pytest.approx(alpha, rel=1e-3, nan_ok=True)
            assert row["alpha_weighted"] == pytest.approx(alpha * np.log10(evals[0]), rel=1e-3,
                                                          nan_ok=True)
            matrices += 1
    assert matrices and vectors  # both kinds of row were checked


def test_fused_row_statistics_equal_numpy_on_awkward_rows() -> None:
    """The compiled kernel against np.percentile and float64 moments on rows
    with ties, outliers, constants, negative zero, NaN and infinity, and lengths 1 to 3."""
    from zooscope.plugins.weightstats import PERCENTILES, row_stats

    rng = np.random.default_rng(5)
    n = 5000
    rows = [rng.standard_normal(n) * 0.02,
            np.round(rng.standard_normal(n), 1),                     # many ties
            np.concatenate([rng.standard_normal(n - 2) * 1e-3, [1e4, -3e3]]),  # outliers
            np.full(n, 0.7),                                          # constant
            np.where(rng.random(n) < 0.5, -0.0, 0.0) + (np.arange(n) % 3 == 0),
            1.0 + rng.standard_normal(n) * 1e-4,                      # LayerNorm-like
            np.where(np.arange(n) == 9, np.nan, rng.standard_normal(n)),
            np.where(np.arange(n) == 9, np.inf, rng.standard_normal(n))]
    x = np.stack(rows).astype(np.float32)
    base = (x + rng.standard_normal(x.shape).astype(np.float32) * 0.01)
    out = row_stats(x, 1e-3, base)
    for i, row in enumerate(x.astype(np.float64)):
        b = base[i].astype(np.float64)
        with np.errstate(all="ignore"):  # the NaN and infinity rows
            c = row - row.mean()
            expect = {"mean": row.mean(), "std": row.std(), "l1": np.abs(row).sum(),
                      "l2": np.linalg.norm(row), "linf": np.abs(row).max(),
                      "near_zero": np.mean(np.abs(row) < 1e-3),
                      "drift_l2": np.linalg.norm(row - b) / np.linalg.norm(b),
                      "drift_cosine": row @ b / (np.linalg.norm(row) * np.linalg.norm(b))}
            if row.std() > 0 and np.isfinite(row).all():
                expect["skew"] = (c**3).mean() / row.std() ** 3
                expect["kurtosis"] = (c**4).mean() / row.std() ** 4 - 3
            for p, v in zip(PERCENTILES, np.percentile(row, PERCENTILES), strict=True):
                expect[f"p{p}"] = v
        for key, value in expect.items():
            assert out[key][i] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), (i, key)
    one_pass = row_stats(x, 1e-3, base, percentiles=False)
    assert not {f"p{p}" for p in PERCENTILES} & set(one_pass)
    assert set(out) - set(one_pass) == {f"p{p}" for p in PERCENTILES}
    for key, col in one_pass.items():  # the same figures, percentiles or not
        np.testing.assert_array_equal(col, out[key], err_msg=key)
    for n in (1, 2, 3):
        short = rng.standard_normal((2, n)).astype(np.float32)
        got = row_stats(short, 1e-3)
        for p, v in zip(PERCENTILES, np.percentile(short.astype(np.float64), PERCENTILES, axis=1),
                        strict=True):
            np.testing.assert_allclose(got[f"p{p}"], v, rtol=1e-12)


def test_power_law_alpha_equals_a_plain_loop_over_xmin() -> None:
    """The vectorised fit against the textbook loop: every xmin, MLE alpha, KS distance."""
    from zooscope.plugins.weightstats import power_law_alpha

    def reference(evals: np.ndarray) -> float:
        x = np.sort(evals[evals > 0])
        best_d, best = np.inf, np.nan
        for i in range(len(x) - 1):
            tail = x[i:]
            total = np.log(tail / tail[0]).sum()
            if total <= 0:
                continue
            alpha = 1 + len(tail) / total
            d = np.abs(np.arange(len(tail)) / len(tail)
                       - (1 - (tail / tail[0]) ** (1 - alpha))).max()
            if d < best_d:
                best_d, best = d, alpha
        return best

    rng = np.random.default_rng(3)
    for n in (5, 64, 300, 700):
        w = rng.standard_normal((n, n // 2 + 1)) @ np.diag(rng.pareto(2.0, n // 2 + 1) + 1)
        evals = np.linalg.svd(w, compute_uv=False) ** 2
        assert power_law_alpha(evals) == pytest.approx(reference(evals), rel=1e-9)


def test_power_law_alpha_recovers_a_known_exponent() -> None:
    from zooscope.plugins.weightstats import power_law_alpha

    rng = np.random.default_rng(1)
    samples = (1 - rng.random(20000)) ** (-1 / (2.5 - 1))  # Pareto tail, alpha = 2.5
    assert power_law_alpha(samples) == pytest.approx(2.5, abs=0.1)


def test_predict_matches_a_hand_built_sklearn_pipeline(zoo_copy: Path, tmp_path: Path) -> None:
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold, cross_val_predict

    from zooscope.plugins.predict import feature_matrix

    missing = run_cli("analyze", str(zoo_copy), "--plugin", "predict")
    assert missing.returncode == 1 and "run `zooscope analyze ZOO --plugin weightstats` first" \
        in missing.stderr
    ws = analyze(zoo_copy, "weightstats", tmp_path)
    result = analyze(zoo_copy, "predict", tmp_path, "folds=2")
    scores = result.tables["scores"]
    keys, x, _ = feature_matrix({k: np.asarray(v) for k, v in ws.tables["stats"].items()})
    with zooscope.open_zoo(zoo_copy) as zoo:
        acc = {(c.member, c.epoch): c.metrics["test_accuracy"] for c in zoo.checkpoints()}
    y = np.array([acc[k] for k in keys])
    groups = np.array([k[0] for k in keys])
    pred = cross_val_predict(GradientBoostingRegressor(random_state=0), x, y, groups=groups,
                             cv=GroupKFold(n_splits=2))
    i = next(k for k in range(len(scores["model"])) if scores["model"][k] == "gradient_boosting"
             and scores["metric"][k] == "r2" and scores["target"][k] == "test_accuracy")
    assert scores["value"][i] == pytest.approx(r2_score(y, pred))
    # The learning rate, a numeric factor, is regressed the same way and rank-scored.
    from scipy.stats import kendalltau

    with zooscope.open_zoo(zoo_copy) as zoo:
        lr = {m.id: m.factors["learning_rate"] for m in zoo.members()}
    y_lr = np.array([lr[k[0]] for k in keys])
    pred_lr = cross_val_predict(GradientBoostingRegressor(random_state=0), x, y_lr,
                                groups=groups, cv=GroupKFold(n_splits=2))
    got = {scores["metric"][k]: scores["value"][k] for k in range(len(scores["model"]))
           if scores["target"][k] == "learning_rate" and scores["model"][k] == "gradient_boosting"
           and scores["metric"][k] != "accuracy"}
    assert got["r2"] == pytest.approx(r2_score(y_lr, pred_lr))
    assert got["kendall_tau"] == pytest.approx(kendalltau(y_lr, pred_lr).statistic, nan_ok=True)
    assert not any(t == "seed" and m != "accuracy"
                   for t, m in zip(scores["target"], scores["metric"], strict=True))


def test_global_threshold_masks_equal_torch_prune() -> None:
    import torch.nn.utils.prune as prune

    from zooscope.plugins.sparsify import magnitude_masks

    torch.manual_seed(0)
    layers = [torch.nn.Linear(50, 30), torch.nn.Linear(30, 20), torch.nn.Linear(20, 5)]
    weights = {f"l{i}": m.weight.detach().numpy().copy() for i, m in enumerate(layers)}
    for amount in (0.1, 0.5, 0.9):
        masks = magnitude_masks(weights, amount, "global")
        mods = [torch.nn.Linear(1, 1) for _ in layers]
        for mod, w in zip(mods, weights.values(), strict=True):
            mod.weight = torch.nn.Parameter(torch.from_numpy(w.copy()))
        prune.global_unstructured([(m, "weight") for m in mods],
                                  pruning_method=prune.L1Unstructured, amount=amount)
        for mod, name in zip(mods, weights, strict=True):
            assert np.array_equal(mod.weight_mask.numpy().astype(bool), masks[name])
        layer = magnitude_masks(weights, amount, "layerwise")
        for name, w in weights.items():
            mod = torch.nn.Linear(1, 1)
            mod.weight = torch.nn.Parameter(torch.from_numpy(w.copy()))
            prune.l1_unstructured(mod, "weight", amount=amount)
            assert np.array_equal(mod.weight_mask.numpy().astype(bool), layer[name])


def test_sparsify_reevaluates_models_rebuilt_from_the_zoo(zoo_copy: Path, tmp_path: Path) -> None:
    result = analyze(zoo_copy, "sparsify", tmp_path, "sparsities=0,0.5", members="seed=0")
    curves = result.tables["curves"]
    with zooscope.open_zoo(zoo_copy) as zoo:
        stored = {c.member: c.metrics["test_accuracy"] for c in zoo.checkpoints(epochs=[2])}
    for member, level, acc, real in zip(curves["member"], curves["sparsity"],
                                        curves["test_accuracy"], curves["realised_sparsity"],
                                        strict=True):
        assert real == pytest.approx(level, abs=1e-3)
        if level == 0:  # no pruning: the stored test accuracy, recomputed from the file alone
            assert acc == pytest.approx(stored[member], abs=1e-6)
    assert (tmp_path / "sparsify" / "sparsity_curves.png").exists()


def test_kept_sparsity_is_the_last_level_within_tolerance_of_dense() -> None:
    """Means over seeds per configuration, and the largest sparsity before the first
    level that falls more than the tolerance below the dense mean (worked by hand)."""
    from zooscope.plugins.sparsify import kept_sparsity
    from zooscope.zoo import Member

    members = [Member(f"m{lr}{seed}", {"learning_rate": lr, "seed": seed})
               for lr in (1, 2) for seed in (0, 1)]
    accuracy = {  # (lr, seed) -> accuracy at sparsity 0, 0.3, 0.6, 0.9
        (1, 0): [0.90, 0.895, 0.87, 0.50], (1, 1): [0.92, 0.91, 0.90, 0.52],
        (2, 0): [0.80, 0.80, 0.81, 0.70], (2, 1): [0.82, 0.79, 0.80, 0.60],
    }
    curves: dict[str, list[object]] = {"member": [], "epoch": [], "sparsity": [],
                                       "test_accuracy": []}
    for (lr, seed), values in accuracy.items():
        for level, value in zip((0.0, 0.3, 0.6, 0.9), values, strict=True):
            curves["member"].append(f"m{lr}{seed}")
            curves["epoch"].append(3)
            curves["sparsity"].append(level)
            curves["test_accuracy"].append(value)
    table = kept_sparsity(curves, "test_accuracy", members, 0.01)
    assert table["configuration"] == ["learning_rate=1", "learning_rate=2"]
    assert table["seeds"] == [2, 2]
    # lr 1: dense 0.91; 0.3 -> 0.9025 (within), 0.6 -> 0.885 (falls): kept 0.3.
    # lr 2: dense 0.81; 0.3 -> 0.795 (falls by 0.015): kept 0.
    assert table["dense_test_accuracy"] == pytest.approx([0.91, 0.81])
    assert table["kept_sparsity"] == [0.3, 0.0]
    assert table["test_accuracy_at_kept"] == pytest.approx([0.9025, 0.81])
    assert kept_sparsity(curves, "test_accuracy", members, 0.02)["kept_sparsity"] == [0.3, 0.6]


@pytest.mark.slow
def test_umap_is_deterministic(zoo_copy: Path, tmp_path: Path) -> None:
    first = analyze(zoo_copy, "umap", tmp_path, "neighbors=5")
    second = analyze(zoo_copy, "umap", tmp_path, "neighbors=5", force=True)
    assert first.tables["coordinates"]["x"] == second.tables["coordinates"]["x"]
    assert len(first.tables["coordinates"]["x"]) == 12
    assert (tmp_path / "umap" / "umap.png").exists()


def test_analyzer_options_are_listed(tiny_zoo: Path) -> None:
    result = run_cli("analyze", "--plugin", "sparsify", "--options", "--json")
    assert result.returncode == 0
    options = {o["option"]: o for o in json.loads(result.stdout)}
    assert options["scope"]["default"] == "global"


def console_rows(stdout: str) -> list[list[str]]:
    """The body rows of the Rich table in a command's output, cells stripped."""
    return [[cell.strip() for cell in line.strip("│").split("│")]
            for line in stdout.splitlines() if line.startswith("│")]


def test_weightstats_console_summary_fits_80_columns(zoo_copy: Path, tmp_path: Path) -> None:
    """Per tensor kind, first and last epoch, a handful of columns: no line over 80
    characters, no value folded onto a second line, numbers equal to stats.csv's means."""
    out = tmp_path / "ws"
    result = run_cli("analyze", str(zoo_copy), "--plugin", "weightstats", "--set", "spectral=true",
                     "--out", str(out), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    rows = console_rows(result.stdout)
    with open(out / "stats.csv") as fh:
        stats = list(csv.DictReader(fh))
    kinds = sorted({r["kind"] for r in stats})
    assert [(r[0], r[1]) for r in rows] == [(k, e) for k in kinds for e in ("0", "2")]
    header = next(line for line in result.stdout.splitlines() if line.startswith("┃"))
    assert [h.strip() for h in header.strip("┃").split("┃")] == [
        "kind", "epoch", "std", "L2", "near 0", "drift", "alpha"]
    def mean(rows: list[dict[str, str]], column: str) -> float:
        values = [float(r[column]) for r in rows if np.isfinite(float(r[column]))]
        return float(np.mean(values)) if values else float("nan")

    for kind, epoch, *cells in rows:
        at = [r for r in stats if r["kind"] == kind and r["epoch"] == epoch]
        for cell, column in zip(cells, ("std", "l2", "near_zero", "drift_l2", "alpha"), strict=True):
            assert float(cell) == pytest.approx(mean(at, column), rel=1e-3, abs=1e-9,
                                                nan_ok=True), (kind, epoch, column)
    assert len(result.stdout.splitlines()) < 40


def test_agreement_console_table_fits_80_columns(zoo_copy: Path, tmp_path: Path) -> None:
    result = run_cli("analyze", str(zoo_copy), "--plugin", "agreement", "--out",
                     str(tmp_path / "ag"), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    rows = console_rows(result.stdout)
    with open(tmp_path / "ag" / "groups.csv") as fh:
        groups = list(csv.DictReader(fh))
    # One line per group at the last epoch: nothing folded, "learning_rate+seed" whole.
    assert [r[:2] for r in rows] == [[g["differ_in"], g["pairs"]] for g in groups
                                     if g["epoch"] == "2"]
    assert "at epoch 2" in result.stdout


def test_configurations_give_mean_and_spread_over_seeds(zoo_copy: Path, tmp_path: Path) -> None:
    """Each configuration's test accuracy: the mean and sample standard deviation of its
    seeds' last-epoch values, recomputed from the checkpoints."""
    result = analyze(zoo_copy, "backbones", tmp_path)
    table = result.tables["configurations"]
    with zooscope.open_zoo(zoo_copy) as zoo:
        last = {}
        for m in zoo.members():
            cp = zoo.checkpoints([m])[-1]
            last.setdefault(m.factors["learning_rate"], []).append(cp.metrics["test_accuracy"])
    assert sorted(table["learning_rate"]) == sorted(last)
    for i, lr in enumerate(table["learning_rate"]):
        assert table["seeds"][i] == 2
        assert table["test_accuracy"][i] == pytest.approx(np.mean(last[lr]))
        assert table["test_accuracy_std"][i] == pytest.approx(np.std(last[lr], ddof=1))


def plain_multi_bootstrap(scores: list[np.ndarray], replicates: int, seed: int
                          ) -> list[np.ndarray]:
    """Each system's replicate scores, by indexing the draws one replicate at a time (the
    documented draw order: every replicate's examples, then each system's seeds)."""
    rng = np.random.default_rng(seed)
    n = scores[0].shape[1]
    examples = rng.integers(0, n, size=(replicates, n))
    seeds = [rng.integers(0, s.shape[0], size=(replicates, s.shape[0])) for s in scores]
    return [np.array([np.mean([s[k][examples[b]].mean() for k in draws[b]])
                      for b in range(replicates)]) for s, draws in zip(scores, seeds, strict=True)]


def test_multi_bootstrap_matches_plain_resampling() -> None:
    """Intervals, differences and P(better) against a replicate-by-replicate resampling
    with the same seed, for systems with different numbers of seeds."""
    from zooscope.services.bootstrap import multi_bootstrap

    rng = np.random.default_rng(3)
    scores = [(rng.random((k, 150)) < p).astype(float) for k, p in ((3, 0.8), (5, 0.75), (1, 0.6))]
    scores[2][0, :10] = 0.5  # a per-example score that is not 0/1 (a token F1)
    intervals, comparisons = multi_bootstrap(scores, replicates=300, seed=11)
    plain = plain_multi_bootstrap(scores, 300, 11)
    for (low, high), reps in zip(intervals, plain, strict=True):
        assert (low, high) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))
        assert low < high
    assert [(c.a, c.b) for c in comparisons] == [(0, 1), (0, 2), (1, 2)]
    for c in comparisons:
        delta = plain[c.a] - plain[c.b]
        assert c.difference == pytest.approx(scores[c.a].mean() - scores[c.b].mean())
        assert (c.low, c.high) == pytest.approx(tuple(np.percentile(delta, [2.5, 97.5])))
        assert c.p_a_better == pytest.approx(np.mean(delta > 0))
    assert comparisons[1].p_a_better > 0.9  # 0.8 against 0.6 on 150 examples
    # Another seed draws other replicates; the same seed the same ones.
    assert multi_bootstrap(scores, 300, 12)[0] != intervals
    assert multi_bootstrap(scores, 300, 11)[0] == intervals


def test_backbone_intervals_resample_seeds_and_examples(zoo_copy: Path, tmp_path: Path) -> None:
    """The chosen configuration's test interval, from its seeds' stored predictions
    resampled by plain numpy with the same seed; no interval with bootstrap=0."""
    result = analyze(zoo_copy, "backbones", tmp_path, "bootstrap=400", "bootstrap_seed=5")
    best = result.tables["best"]
    with zooscope.open_zoo(zoo_copy) as zoo:
        members = zoo.members(learning_rate=best["learning_rate"][0])
        cps = [zoo.checkpoints([m])[-1] for m in members]
        correct = (zoo.predictions(cps) == zoo.test_labels()[None, :]).astype(float)
        assert correct.mean() == pytest.approx(best["test_accuracy"][0])
    (reps,) = plain_multi_bootstrap([correct], 400, 5)
    expected = np.percentile(reps, [2.5, 97.5])
    assert (best["test_accuracy_low"][0], best["test_accuracy_high"][0]) == \
        pytest.approx(tuple(expected))
    assert f"[{expected[0]:.3f}, {expected[1]:.3f}]" in result.summary
    assert "comparisons" not in result.tables  # one backbone: nothing to compare
    for sub in ("bare", "loss"):
        (tmp_path / sub).mkdir()
    bare = analyze(zoo_copy, "backbones", tmp_path / "bare", "bootstrap=0")
    assert "test_accuracy_low" not in bare.tables["best"] and "Intervals" not in bare.summary
    loss = analyze(zoo_copy, "backbones", tmp_path / "loss", "metric=loss")
    assert "test_loss_low" not in loss.tables["best"]
    assert "No intervals: loss is not scored per test example" in loss.summary


def test_reevaluation_reads_the_zoos_own_test_inputs(zoo_copy: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Pruning re-evaluates members from the zoo alone: the data files are never loaded,
    and the unpruned accuracy is the stored one; tampered inputs are refused."""
    import h5py

    from zooscope.errors import ZooFileError
    from zooscope.generators.text_classification import TextClassificationGenerator
    from zooscope.services.evaluation import Evaluator

    def no_data(*args: object) -> None:
        raise AssertionError("the data files were loaded")

    monkeypatch.setattr(TextClassificationGenerator, "prepare", no_data)
    result = analyze(zoo_copy, "sparsify", tmp_path, "sparsities=0", members="seed=1")
    with zooscope.open_zoo(zoo_copy) as zoo:
        stored = {c.member: c.metrics["test_accuracy"] for c in zoo.checkpoints(epochs=[2])}
    curves = result.tables["curves"]
    assert len(curves["member"]) == 2
    for member, acc in zip(curves["member"], curves["test_accuracy"], strict=True):
        assert acc == pytest.approx(stored[member], abs=1e-6)
    with h5py.File(zoo_copy, "r+") as f:
        texts = f["data/test_texts"]
        texts[0] = texts.asstr()[0] + " tampered"
    with zooscope.open_zoo(zoo_copy) as zoo, pytest.raises(ZooFileError, match="fingerprint"):
        Evaluator(zoo)


@pytest.mark.parametrize("metric", ["", "loss"])
def test_curves_pick_the_epoch_validation_picks(zoo_copy: Path, tmp_path: Path,
                                                metric: str) -> None:
    """Early stopping, the test score there and at the end, and the overfitting onset,
    against numpy over the stored metrics."""
    import numpy as np

    sets = [f"metric={metric}"] if metric else []
    result = analyze(zoo_copy, "curves", tmp_path, *sets)
    name = metric or "accuracy"  # the tiny zoo's default: accuracy, the first preferred
    table = result.tables["members"]
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert list(table["member"]) == [m.id for m in zoo.members()]
        for i, m in enumerate(zoo.members()):
            cps = zoo.checkpoints([m])
            epochs = np.array([c.epoch for c in cps])
            val = np.array([c.metrics[f"validation_{name}"] for c in cps])
            test = np.array([c.metrics[f"test_{name}"] for c in cps])
            pick = int(np.argmin(val) if name == "loss" else np.argmax(val))  # first on a tie
            assert table["best_epoch"][i] == epochs[pick]
            assert table[f"test_{name}_best"][i] == pytest.approx(test[pick])
            assert table[f"test_{name}_last"][i] == pytest.approx(test[-1])
            assert table["gain"][i] == pytest.approx(test[pick] - test[-1])
            vl = np.array([c.metrics["validation_loss"] for c in cps])
            tl = np.array([c.metrics["train_loss"] for c in cps])
            onset = np.flatnonzero((np.diff(vl) > 0) & (np.diff(tl) < 0))
            assert table["overfit_epoch"][i] == (epochs[onset[0] + 1] if len(onset) else -1)
    assert (tmp_path / "curves" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"validation {name}" in result.summary


def test_curves_with_the_last_epoch_worst_on_dev_pick_an_earlier_one(zoo_copy: Path,
                                                                      tmp_path: Path) -> None:
    """A member whose validation score fell at the end: early stopping goes back, and
    the training loss falling while validation loss rose is named as overfitting."""
    from zooscope.plugins.curves import best_epoch, overfit_onset
    from zooscope.zoo import Checkpoint

    def cp(epoch: int, val_acc: float, val_loss: float, train_loss: float) -> Checkpoint:
        return Checkpoint("m", epoch, epoch, 0.0, {"validation_accuracy": val_acc,
                                                   "validation_loss": val_loss,
                                                   "train_loss": train_loss})

    cps = [cp(0, 0.5, 0.7, 0.7), cp(1, 0.8, 0.4, 0.4), cp(2, 0.8, 0.45, 0.3),
           cp(3, 0.7, 0.6, 0.2)]
    assert best_epoch(cps, "validation_accuracy", lower_is_better=False) == 1  # tie: earliest
    assert best_epoch(cps, "validation_loss", lower_is_better=True) == 1
    assert overfit_onset(cps) == 2
    assert overfit_onset(cps[:2]) is None
    assert best_epoch(cps, "test_accuracy", lower_is_better=False) is None


def test_curves_refuse_a_metric_the_zoo_lacks(zoo_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(zooscope.ZooFileError, match="this zoo records no 'validation_f1'"):
        analyze(zoo_copy, "curves", tmp_path, "metric=f1")
