"""The `cxr-edge` command-line program: one sub-command per stage.

Commands are thin: parse, build the config, call the library, print. User errors (bad data, a
missing run, an unknown backbone) print one clear message and exit with status 2; an error no check
foresaw prints one line naming its type and exits with status 1. Set CXR_EDGE_DEBUG=1 to see the
traceback as well.
"""

from __future__ import annotations

import typer

from cli import bench_cmd, data_cmd, export_cmd, gradcam_cmd, predict_cmd, report_cmd, train_cmd

app = typer.Typer(
    name="cxr-edge",
    help="Chest X-ray pneumonia classifiers from training to the edge: data, train, evaluate, export, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(data_cmd.app, name="data")
app.command("train")(train_cmd.train)
app.command("train-all")(train_cmd.train_all)
app.command("recipes")(train_cmd.recipes)
app.command("evaluate")(train_cmd.evaluate)
app.command("export")(export_cmd.export)
app.command("bench")(bench_cmd.bench)
app.command("table")(bench_cmd.table)
app.command("recommend")(bench_cmd.recommend)
app.command("compare")(bench_cmd.compare)
app.command("gradcam")(gradcam_cmd.gradcam)
app.command("fidelity")(gradcam_cmd.fidelity)
app.command("report")(report_cmd.report)
app.command("predict")(predict_cmd.predict)
app.command("package")(predict_cmd.package)


if __name__ == "__main__":
    app()
