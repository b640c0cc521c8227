"""An example third-party analyzer: every member's metric at its last epoch."""

import zooscope
from zooscope.analysis import AnalysisResult, Analyzer, Option


class FinalMetric(Analyzer):
    name = "final-metric"
    description = "each member's metric at its last epoch, as a table and a bar chart"
    options = (Option("metric", str, "test_accuracy", "the metric column to report"),)

    def analyze(self, zoo, options, selection):
        metric = options["metric"]
        rows = {"member": [], "epoch": [], metric: []}
        for member in selection.members:
            checkpoints = zoo.checkpoints(member, selection.epochs)
            if checkpoints and metric in checkpoints[-1].metrics:
                rows["member"].append(member.id)
                rows["epoch"].append(checkpoints[-1].epoch)
                rows[metric].append(checkpoints[-1].metrics[metric])
        if not rows["member"]:
            raise zooscope.ZooscopeError(f"no member has the metric {metric!r}")

        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(range(len(rows["member"])), rows[metric])
        ax.set_xticks(range(len(rows["member"])), rows["member"], rotation=90, fontsize=7)
        ax.set_ylabel(metric)
        best = max(range(len(rows[metric])), key=rows[metric].__getitem__)
        summary = (f"{len(rows['member'])} members; best {metric} "
                   f"{rows[metric][best]:.4f} by {rows['member'][best]}.")
        return AnalysisResult(tables={"final": rows}, summary=summary, figures={"final": fig})


@zooscope.hookimpl
def zooscope_register_analyzers(register):
    register(FinalMetric())
