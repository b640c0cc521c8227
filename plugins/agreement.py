"""The ``agreement`` analyzer: how often members predict the same test label.

Pairwise agreement and Cohen's kappa from the stored test predictions (no model
is run), disagreement next to test error (Jiang et al. 2022), by factor group.

Group means come with 95 % intervals from a multi-bootstrap (``zooscope.services.bootstrap``):
each replicate resamples the test examples and the seeds, and a pair of members counts
as often as both its members' seeds were drawn (the product of their draw counts).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import zooscope
from zooscope.analysis import (
    BOOTSTRAP_OPTIONS,
    AnalysisResult,
    Analyzer,
    Option,
    Selection,
    plotting,
    varying_factors,
)
from zooscope.errors import ConfigError, ZooFileError
from zooscope.zoo import Member, Zoo

if TYPE_CHECKING:
    import numpy as np


def agreement_matrix(predictions: np.ndarray, num_classes: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise agreement and Cohen's kappa of class predictions, shape (members, examples).

    Vectorised through one-hot products: for N members, n examples and K classes
    it costs one (N × nK) @ (nK × N) product instead of N² passes over the data.
    Kappa is 0/0 for two identical constant predictors (chance agreement is already
    1): it is NaN there, as in sklearn's ``cohen_kappa_score``.
    """
    import numpy as np

    preds = np.asarray(predictions)
    n_members, n_examples = preds.shape
    k = int(num_classes if num_classes is not None else preds.max() + 1)
    agree = np.zeros((n_members, n_members), dtype=np.float64)
    freq = np.empty((n_members, k), dtype=np.float64)
    for c in range(k):  # one class at a time keeps memory at N × n
        onehot = (preds == c).astype(np.float32)
        agree += onehot @ onehot.T
        freq[:, c] = onehot.sum(axis=1)
    agree /= n_examples
    freq /= n_examples
    expected = freq @ freq.T
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(expected < 1.0, (agree - expected) / (1.0 - expected), np.nan)
    return agree, kappa


def span_agreement(answers: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise exact match and token F1 between members' answers to the same questions.

    ``answers[m][q]`` is member m's answer text to question q; both are compared after
    SQuAD's normalisation. Per question, F1 is computed once per pair of distinct
    answers and spread to all member pairs by indexing.
    """
    import numpy as np

    from zooscope.kit.qa import normalize_answer, token_f1

    n_members = len(answers)
    n_questions = len(answers[0]) if answers else 0
    em = np.zeros((n_members, n_members))
    f1 = np.zeros((n_members, n_members))
    for q in range(n_questions):
        norm = [normalize_answer(a[q]) for a in answers]
        unique, inverse = np.unique(np.asarray(norm, dtype=object).astype(str), return_inverse=True)
        tokens = [u.split() for u in unique]
        table = np.array([[1.0 if a == b else token_f1(a, b) for b in tokens] for a in tokens])
        same = inverse[:, None] == inverse[None, :]
        em += same
        f1 += table[inverse][:, inverse]
    if n_questions:
        em /= n_questions
        f1 /= n_questions
    return em, f1


def _sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def differing_factors(a: Member, b: Member) -> str:
    keys = sorted(set(a.factors) | set(b.factors))
    diff = [k for k in keys if str(a.factors.get(k)) != str(b.factors.get(k))]
    return "+".join(diff) if diff else "none"


def configuration_label(member: Member, varying: Sequence[str]) -> str:
    """A configuration's name: the factors that vary among the members, but the seed."""
    return ", ".join(f"{f}={member.factors.get(f)}" for f in varying) or "all"


def seed_pair_table(pairs: dict[str, list[Any]], by_id: dict[str, Member],
                    spans: dict[tuple[int, str], tuple[float, ...]] | None = None
                    ) -> dict[str, list[Any]]:
    """Per epoch and configuration (every factor but the seed), the pairs of members
    that differ only in seed: their mean disagreement next to their mean test error,
    the two sides of Jiang et al.'s (2022) generalisation disagreement equality.
    ``spans``, by (epoch, ``seed:`` + configuration), gives their bootstrap intervals."""
    import numpy as np

    acc: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    factors: dict[str, dict[str, Any]] = {}
    # A configuration is named by the factors that vary among the members (not the seed).
    varying = varying_factors(by_id.values(), skip=("seed",))
    for k, diff in enumerate(pairs["differ_in"]):
        if diff != "seed":
            continue
        rest = {f: by_id[pairs["member_a"][k]].factors.get(f) for f in varying}
        label = configuration_label(by_id[pairs["member_a"][k]], varying)
        factors[label] = rest
        acc[(pairs["epoch"][k], label)].append(
            (pairs["disagreement"][k], (pairs["error_a"][k] + pairs["error_b"][k]) / 2))
    names = sorted({f for rest in factors.values() for f in rest})
    table: dict[str, list[Any]] = {"epoch": [], "configuration": [],
                                   **{f: [] for f in names}, "pairs": [],
                                   "mean_disagreement": [], "mean_test_error": [],
                                   "disagreement_minus_error": []}
    for (epoch, label), values in sorted(acc.items()):
        arr = np.asarray(values)
        table["epoch"].append(epoch)
        table["configuration"].append(label)
        for f in names:
            table[f].append(factors[label].get(f))
        table["pairs"].append(len(values))
        table["mean_disagreement"].append(float(arr[:, 0].mean()))
        table["mean_test_error"].append(float(arr[:, 1].mean()))
        table["disagreement_minus_error"].append(float(arr[:, 0].mean() - arr[:, 1].mean()))
        if spans is not None:
            # Disagreement is 1 - agreement: its interval is the agreement's, mirrored.
            low, high, err_low, err_high = spans.get((epoch, f"seed:{label}"), (np.nan,) * 4)
            for column, value in (("disagreement_low", 1 - high), ("disagreement_high", 1 - low),
                                  ("error_low", err_low), ("error_high", err_high)):
                table.setdefault(column, []).append(value)
    return table


def pair_intervals(codes: np.ndarray, wrong: np.ndarray, seed_of: np.ndarray,
                   groups: dict[Any, list[tuple[int, int]]], draws: Any
                   ) -> dict[Any, tuple[float, float, float, float]]:
    """Multi-bootstrap intervals of a group's mean agreement and mean test error.

    ``codes`` (members, examples): what each member answers, equal codes meaning the same
    answer; ``wrong`` (members, examples): 1 where the member is wrong; ``seed_of``: each
    member's index among the drawn seeds; ``groups``: pairs of member indices by group;
    ``draws``: a ``zooscope.services.bootstrap.Draws`` with one seed system. A replicate weighs
    pair (i, j) by the draw counts of their seeds multiplied, examples by theirs.
    Returns (agreement low, high, error low, high) per group.
    """
    import numpy as np

    from zooscope.services.bootstrap import interval

    examples = draws.examples.T.astype(np.float64)  # (n_examples, replicates)
    seeds = draws.seeds[0].astype(np.float64)  # (replicates, n_seeds)
    n = codes.shape[1]
    member_error = wrong.astype(np.float64) @ examples / n  # (members, replicates)
    out = {}
    for key, pairs in groups.items():
        i, j = np.array(pairs).T
        agree = (codes[i] == codes[j]).astype(np.float64) @ examples / n  # (pairs, replicates)
        error = (member_error[i] + member_error[j]) / 2
        weight = seeds[:, seed_of[i]] * seeds[:, seed_of[j]]  # (replicates, pairs)
        total = weight.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_agree = (weight * agree.T).sum(axis=1) / total
            mean_error = (weight * error.T).sum(axis=1) / total
        out[key] = (*interval(mean_agree), *interval(mean_error))
    return out


def answer_codes(answers: list[list[str]]) -> np.ndarray:
    """Members' answers as integer codes per question: equal after SQuAD's normalisation
    ⇔ equal code (what exact match between two members compares)."""
    import numpy as np

    from zooscope.kit.qa import normalize_answer

    codes = np.zeros((len(answers), len(answers[0]) if answers else 0), dtype=np.int64)
    for q in range(codes.shape[1]):
        norm = np.asarray([normalize_answer(a[q]) for a in answers], dtype=object).astype(str)
        codes[:, q] = np.unique(norm, return_inverse=True)[1]
    return codes


class Agreement(Analyzer):
    name = "agreement"
    description = ("pairwise agreement and Cohen's kappa of test predictions; disagreement "
                   "vs test error (Jiang et al. 2022)")
    options = (
        Option("order", str, "", "factors to order the heatmap by, comma-separated "
               "(default: all factors)"),
        *BOOTSTRAP_OPTIONS,
    )

    def analyze(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> AnalysisResult:
        import numpy as np

        from zooscope.services.bootstrap import draw

        replicates = options["bootstrap"]
        kind = zoo.prediction_kind()
        if kind not in ("class", "span"):
            raise ZooFileError("agreement needs stored test predictions (class ids or answer "
                               f"spans); this zoo stores {kind or 'none'}")
        # Classes: agreement and Cohen's kappa. Answer spans (QA): exact match and token
        # F1 between the two members' answers, after SQuAD's normalisation.
        second = "kappa" if kind == "class" else "f1"
        labels = zoo.test_labels()
        factors = sorted({k for m in selection.members for k in m.factors})
        order_keys = [k.strip() for k in options["order"].split(",") if k.strip()] or factors
        unknown = [k for k in order_keys if k not in factors]
        if unknown:
            raise ConfigError(f"option order = {options['order']!r}: {unknown[0]!r} is not a "
                              "factor of the selected members",
                              hint=f"their factors: {', '.join(factors) or 'none'}")
        members = sorted(selection.members,
                         key=lambda m: tuple(_sort_key(m.factors.get(k)) for k in order_keys))
        by_epoch: dict[int, list[Any]] = defaultdict(list)
        for c in zoo.checkpoints(members, selection.epochs):
            by_epoch[c.epoch].append(c)
        pairs: dict[str, list[Any]] = defaultdict(list)
        groups: dict[str, list[Any]] = defaultdict(list)
        per_member: dict[str, list[Any]] = defaultdict(list)
        by_id = {m.id: m for m in members}
        last = max(by_epoch)
        matrix_table: dict[str, list[Any]] = {}
        heats: list[tuple[int, np.ndarray, list[str]]] = []
        if kind == "class":
            num_classes = int(max(labels.max() if labels is not None else 0,
                                  zoo.predictions().max()) + 1)
        else:
            from zooscope.kit.qa import best_over_truths

            gold = zoo.test_answers() or []
        n_examples = len(labels) if kind == "class" and labels is not None else \
            len(gold) if kind == "span" else 0
        # One set of draws for every epoch; seeds by value, so a seed's members come together.
        seed_values = sorted({str(m.factors.get("seed")) for m in members})
        draws = draw(n_examples, [len(seed_values)], replicates, options["bootstrap_seed"]) \
            if replicates and n_examples else None
        varying = varying_factors(members, skip=("seed",))
        spans: dict[tuple[int, str], tuple[float, float, float, float]] = {}
        for epoch in sorted(by_epoch):
            cps = by_epoch[epoch]
            if kind == "class":
                preds = zoo.predictions(cps)
                agree, kappa = agreement_matrix(preds, num_classes)
                codes = preds
                wrong = preds != labels[None, :] if labels is not None else None
                errors = wrong.mean(axis=1) if wrong is not None else np.full(len(cps), np.nan)
            else:
                answers = zoo.predicted_answers(cps)
                agree, kappa = span_agreement(answers)
                codes = answer_codes(answers)
                wrong = np.array([[1 - best_over_truths(a, g)[0] for a, g in zip(row, gold,
                                                                                 strict=True)]
                                  for row in answers])
                errors = wrong.mean(axis=1)
            for i, c in enumerate(cps):
                per_member["epoch"].append(epoch)
                per_member["member"].append(c.member)
                per_member["test_error"].append(float(errors[i]))
            iu, ju = np.triu_indices(len(cps), k=1)
            group_acc: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
            group_pairs: dict[Any, list[tuple[int, int]]] = defaultdict(list)
            for i, j in zip(iu, ju, strict=True):
                a, b = by_id[cps[i].member], by_id[cps[j].member]
                diff = differing_factors(a, b)
                group_pairs[diff].append((i, j))
                if diff == "seed":
                    group_pairs[("seed", configuration_label(a, varying))].append((i, j))
                pairs["epoch"].append(epoch)
                pairs["member_a"].append(a.id)
                pairs["member_b"].append(b.id)
                pairs["differ_in"].append(diff)
                pairs["agreement"].append(float(agree[i, j]))
                pairs[second].append(float(kappa[i, j]))
                pairs["disagreement"].append(float(1 - agree[i, j]))
                pairs["error_a"].append(float(errors[i]))
                pairs["error_b"].append(float(errors[j]))
                group_acc[diff].append((agree[i, j], kappa[i, j], (errors[i] + errors[j]) / 2))
            if draws is not None and wrong is not None and group_pairs:
                seed_of = np.array([seed_values.index(str(by_id[c.member].factors.get("seed")))
                                    for c in cps])
                for key, span in pair_intervals(codes, wrong, seed_of, group_pairs,
                                                draws).items():
                    spans[(epoch, key if isinstance(key, str) else f"seed:{key[1]}")] = span
            for diff, values in sorted(group_acc.items()):
                arr = np.asarray(values)
                groups["epoch"].append(epoch)
                groups["differ_in"].append(diff)
                groups["pairs"].append(len(values))
                groups["mean_agreement"].append(float(arr[:, 0].mean()))
                # Undefined kappas (identical constant predictors) are left out of the
                # mean and counted, so a group of such pairs does not read as perfect.
                undefined = int(np.isnan(arr[:, 1]).sum())
                groups[f"mean_{second}"].append(
                    float(np.nanmean(arr[:, 1])) if undefined < len(arr) else float("nan"))
                if second == "kappa":
                    groups["kappa_undefined"].append(undefined)
                groups["mean_disagreement"].append(float(1 - arr[:, 0].mean()))
                groups["mean_test_error"].append(float(arr[:, 2].mean()))
                if draws is not None:
                    low, high, err_low, err_high = spans.get((epoch, diff), (np.nan,) * 4)
                    groups["agreement_low"].append(low)
                    groups["agreement_high"].append(high)
                    groups["error_low"].append(err_low)
                    groups["error_high"].append(err_high)
            ids = [c.member for c in cps]
            heats.append((epoch, agree, ids))
            if epoch == last:
                matrix_table = {"member": ids, **{mid: agree[:, k].tolist()
                                                  for k, mid in enumerate(ids)}}
        summary = self._summary(pairs, per_member, last, len(by_epoch[last]), second)
        if draws is not None:
            summary += (f" Intervals (groups.csv, seed_pairs.csv): 95%, multi-bootstrap over "
                        f"seeds and test examples ({replicates} replicates).")
        seed_pairs = seed_pair_table(pairs, by_id, spans if draws is not None else None)
        draw = plotting()
        figures = {"agreement_heatmap": _heatmap(heats, by_id, second)} if heats and draw else {}
        if seed_pairs["epoch"] and draw:
            figures["disagreement_vs_error"] = _gde_figure(seed_pairs)
        return AnalysisResult(tables={"pairs": dict(pairs), "groups": dict(groups),
                                      "seed_pairs": seed_pairs, "members": dict(per_member),
                                      "matrix": matrix_table},
                              summary=summary, figures=figures)

    def display(self, tables: Any) -> tuple[str, dict[str, Any]] | None:
        """The group means at the last selected epoch, under short headings; every epoch,
        the pairs and the matrix are in their CSVs."""
        groups = tables.get("groups")
        if not groups:
            return super().display(tables)
        last = max(groups["epoch"])
        keep = [i for i, e in enumerate(groups["epoch"]) if e == last]
        second = "kappa" if "mean_kappa" in groups else "f1"
        heads = {"differ_in": "pairs differ in", "pairs": "pairs", "mean_agreement": "agree",
                 f"mean_{second}": second, "kappa_undefined": "0/0",
                 "mean_test_error": "error"}
        cols = {head: [groups[c][i] for i in keep] for c, head in heads.items() if c in groups}
        title = (f"means over pairs at epoch {last} (every epoch in groups.csv; 0/0: pairs "
                 "without a kappa")
        if "agreement_low" in groups:
            cols["agree 95%"] = [f"{groups['agreement_low'][i]:.3f}–"
                                 f"{groups['agreement_high'][i]:.3f}" for i in keep]
            # the interval next to the value it bounds
            order = ["pairs differ in", "pairs", "agree", "agree 95%"]
            cols = {k: cols[k] for k in order + [k for k in cols if k not in order] if k in cols}
            title += "; 95%: multi-bootstrap over seeds and test examples"
        return title + ")", cols

    @staticmethod
    def _summary(pairs: dict[str, list[Any]], per_member: dict[str, list[Any]], epoch: int,
                 n: int, second: str = "kappa") -> str:
        import numpy as np

        at = [i for i, e in enumerate(pairs["epoch"]) if e == epoch]
        errs = [per_member["test_error"][i] for i, e in enumerate(per_member["epoch"]) if e == epoch]
        if not at:
            return f"one member at epoch {epoch}: nothing to compare."
        agree = np.mean([pairs["agreement"][i] for i in at])
        values = np.array([pairs[second][i] for i in at])
        undefined = int(np.isnan(values).sum())
        kappa = float(np.nanmean(values)) if undefined < len(values) else float("nan")
        kappa_text = f"{kappa:.3f}" if undefined < len(values) else "undefined"
        if undefined:
            kappa_text += (f" ({undefined} of {len(values)} pairs left out: both members "
                           f"predict the same single class, so kappa is 0/0)")
        seed_only = [pairs["disagreement"][i] for i in at if pairs["differ_in"][i] == "seed"]
        if second == "kappa":
            text = (f"{n} members at epoch {epoch}: mean pairwise agreement {agree:.3f}, "
                    f"Cohen's kappa {kappa_text}; mean test error {np.mean(errs):.3f}.")
        else:
            text = (f"{n} members at epoch {epoch}: members' answers match exactly on {agree:.3f} "
                    f"of test questions (token F1 {kappa:.3f} between members); mean test error "
                    f"(1 - exact match) {np.mean(errs):.3f}.")
        if seed_only and second == "kappa":
            text += (f" Pairs that differ only in seed disagree on {np.mean(seed_only):.3f} of "
                     f"test examples; Jiang et al. (2022) expect this to match the mean test "
                     f"error.")
        return text


def _heatmap(heats: list[tuple[int, np.ndarray, list[str]]], by_id: dict[str, Member],
             second: str, most: int = 6) -> Any:
    """One agreement matrix per selected epoch (at most ``most``, evenly spread, first and
    last included), members labelled by the factors that vary, values written in the
    cells of small zoos."""
    import matplotlib.pyplot as plt
    import numpy as np

    from zooscope.analysis import member_labels

    if len(heats) > most:
        pick = sorted({round(i) for i in np.linspace(0, len(heats) - 1, most)})
        drawn = [heats[i] for i in pick]
    else:
        drawn = heats
    n = max(len(ids) for _, _, ids in drawn)
    ids_all = list(dict.fromkeys(i for _, _, ids in drawn for i in ids))
    labels, constant = member_labels([by_id[i] for i in ids_all])
    cols = min(3, len(drawn))
    rows = -(-len(drawn) // cols)
    side = min(2.2 + 0.32 * n, 9.0)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 2.5, side * rows + 2.5),
                             squeeze=False, layout="constrained")
    low = min(min(float(a.min()) for _, a, _ in drawn), 0.9)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= len(drawn):
            ax.set_visible(False)
            continue
        epoch, agree, ids = drawn[k]
        image = ax.imshow(agree, vmin=low, vmax=1.0, cmap="viridis")
        ax.set_title(f"epoch {epoch}", fontsize=9)
        if len(ids) <= 40:
            names = [labels[i] for i in ids]
            ax.set_xticks(range(len(ids)), names if k // cols == rows - 1 or
                          k + cols >= len(drawn) else [], rotation=90, fontsize=7)
            ax.set_yticks(range(len(ids)), names if k % cols == 0 else [], fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if len(ids) <= 12:  # small zoos: the value in each cell
            for (i, j), v in np.ndenumerate(agree):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < low + 0.6 * (1 - low) else "black")
    title = "test-prediction agreement"
    if len(drawn) < len(heats):
        title += f", {len(drawn)} of {len(heats)} selected epochs (all in pairs.csv)"
    fig.suptitle(title + (f"\n{constant}" if constant else ""), fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, label="agreement")
    return fig


def _gde_figure(table: dict[str, list[Any]]) -> Any:
    """Mean disagreement of seed-only pairs against their mean test error, one point per
    configuration and epoch (the last epoch solid, earlier ones faded and joined), with
    the diagonal on which Jiang et al.'s equality puts them."""
    import matplotlib.pyplot as plt
    import numpy as np

    epochs = np.asarray(table["epoch"])
    labels = sorted(set(table["configuration"]))
    last = int(epochs.max())
    fig, ax = plt.subplots(figsize=(6.4, 5.2), layout="constrained")
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(labels), 1)))
    for colour, label in zip(colours, labels, strict=True):
        rows = [i for i, c in enumerate(table["configuration"]) if c == label]
        rows.sort(key=lambda i: table["epoch"][i])
        err = np.array([table["mean_test_error"][i] for i in rows])
        dis = np.array([table["mean_disagreement"][i] for i in rows])
        ax.plot(err, dis, "-", color=colour, alpha=0.35, linewidth=1)
        at_last = [k for k, i in enumerate(rows) if table["epoch"][i] == last]
        ax.scatter(err[at_last], dis[at_last], color=colour, s=40, label=label, zorder=3,
                   clip_on=False)
        early = [k for k, i in enumerate(rows) if table["epoch"][i] != last]
        ax.scatter(err[early], dis[early], color=colour, s=14, alpha=0.35, zorder=2)
    values = table["mean_test_error"] + table["mean_disagreement"]
    top = min(max(max(values) * 1.08, 0.05), 1.0)
    ax.plot([0, top], [0, top], "--", color="grey", linewidth=1, label="disagreement = error")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("mean test error of the pair")
    ax.set_ylabel("disagreement between seeds")
    ax.set_title(f"pairs differing only in seed: large points epoch {last}, "
                 "small earlier epochs", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    return fig


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(Agreement())
