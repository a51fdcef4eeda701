"""The ``recforge`` command line (typer + rich).

User errors (``RecforgeError``) print one line and exit with code 2; pass
``--debug`` to see the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from recforge.errors import RecforgeError
from recforge.params import DEFAULT_PARAMS_FILE, Params, load_params

app = typer.Typer(help="recforge: train, evaluate, version and serve two-stage recommenders.", no_args_is_help=True)
data_app = typer.Typer(help="Download, import and describe datasets.", no_args_is_help=True)
plugins_app = typer.Typer(help="Inspect registered plugins.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(plugins_app, name="plugins")

# piped output (CI logs, tests) gets a wide console so tables are not truncated
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-S", help="override, e.g. -S data.format=synthetic")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]


def _setup_logging(debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=errors, show_path=False)], force=True
    )
    for noisy in ("great_expectations", "numexpr", "urllib3", "matplotlib", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _guard(debug: bool, body: Callable[[], Any]) -> Any:
    _setup_logging(debug)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    try:
        return body()
    except RecforgeError as exc:
        if debug:
            raise
        # the message is plain text: rich markup would eat any [word] in it
        errors.print(Text.assemble(("error:", "bold red"), f" {exc}"), soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


def metrics_table(metrics: dict[str, dict], k: int = 10) -> Table:
    table = Table(title=f"test metrics (validation NDCG@{k} in the last column)")
    for column in [
        "model",
        f"NDCG@{k}",
        f"Recall@{k}",
        f"MRR@{k}",
        f"MAP@{k}",
        f"coverage@{k}",
        "users",
        f"val NDCG@{k}",
    ]:
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for name, m in metrics.items():
        table.add_row(
            name,
            *(f"{m.get(f'{key}@{k}', float('nan')):.4f}" for key in ("ndcg", "recall", "mrr", "map", "coverage")),
            str(m.get("users", "")),
            f"{m.get('val', {}).get(f'ndcg@{k}', float('nan')):.4f}",
        )
    return table


QUALITY_HINT = (
    "hint: params.yaml holds quick demo settings; on real data `-p configs/quality.yaml` is the quality profile "
    "(about 4 minutes for ml-latest-small's 100k ratings on 2 cores; docs/rerank.md)"
)


@app.command()
def run(params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Run the whole pipeline and print the metrics table."""

    def body() -> None:
        from recforge.pipeline import run_pipeline
        from recforge.stages import STAGE_ORDER

        params = load_params(params_file, set_ or [])
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=errors
        ) as progress:
            task = progress.add_task("pipeline", total=len(STAGE_ORDER))
            progress.update(task, description=f"stage {STAGE_ORDER[0]}")

            def advance(name: str, seconds: float) -> None:
                done = STAGE_ORDER.index(name) + 1
                following = STAGE_ORDER[done] if done < len(STAGE_ORDER) else "done"
                progress.update(task, advance=1, description=f"stage {following}")

            run_pipeline(params, on_stage=advance)
        _print_metrics(params)
        if params.data.format != "synthetic" and Path(params_file).resolve() == Path(DEFAULT_PARAMS_FILE).resolve():
            errors.print(QUALITY_HINT, highlight=False, soft_wrap=True)  # real data, the demo settings

    _guard(debug, body)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="ingest|validate|split|encode|train|rerank|evaluate|package")],
    variant: Annotated[
        str | None, typer.Argument(help="one part of the stage: a recommender (train), an encoder (encode)")
    ] = None,
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    dvc_variant: Annotated[
        bool, typer.Option("--dvc-variant", help="the variant from DVC_STAGE (dvc.yaml's foreach stages)")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Run one pipeline stage, or one variant of it (`recforge stage train NAME`)."""

    def body() -> None:
        from recforge import stages
        from recforge.locking import workspace_lock
        from recforge.stages import get_stage

        params = load_params(params_file, set_ or [])
        stage = get_stage(name)
        chosen = stages.dvc_variant(os.environ.get("DVC_STAGE")) if dvc_variant else variant
        with workspace_lock(params.paths.cache_dir):
            stage.run(params, chosen)
        if name == "evaluate":
            _print_metrics(params)

    _guard(debug, body)


@app.command()
def validate(params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Run the data gate on the canonical tables."""

    def body() -> None:
        from recforge.stages.validate import run_validate

        params = load_params(params_file, set_ or [])
        run_validate(params)
        console.print(f"validation passed; report: {Path(params.paths.reports_dir) / 'validation.md'}")

    _guard(debug, body)


@app.command()
def evaluate(params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Compute metrics from the written lists and print them."""

    def body() -> None:
        from recforge.stages.evaluate import run_evaluate

        params = load_params(params_file, set_ or [])
        run_evaluate(params)
        _print_metrics(params)

    _guard(debug, body)


@app.command()
def explain(
    user: Annotated[str, typer.Argument(help="user id (as in the data)")],
    item: Annotated[str, typer.Argument(help="item id (as in the data)")],
    explainer: Annotated[
        list[str] | None, typer.Option("--explainer", "-e", help="explainer(s); default: every registered one")
    ] = None,
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Explain why ITEM suits USER (every registered explainer, or those given with -e)."""

    def body() -> None:
        from recforge.explain import explain_recommendation

        params = load_params(params_file, set_ or [])
        result = explain_recommendation(params, user, item, explainer or None)
        evidence = result["evidence"]
        console.print(f"[bold]{evidence['item_title']}[/bold] for user {user}")
        for name, text in result["explanations"].items():
            console.print(f"[cyan]{name}[/cyan]: {text}")

    _guard(debug, body)


def _print_metrics(params: Params) -> None:
    path = Path(params.paths.metrics_file)
    if path.exists():
        console.print(metrics_table(json.loads(path.read_text()), params.evaluate.k))


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="movielens-100k | movielens-1m | movielens-latest-small")],
    dest: Annotated[Path, typer.Option(help="where to unpack")] = Path("data/raw"),
    debug: DebugOpt = False,
) -> None:
    """Download a public dataset (needs network access)."""

    def body() -> None:
        from recforge.data.download import download

        path, data_format = download(name, dest)
        console.print(f"downloaded to {path}; use -S data.format={data_format} -S data.path={path}")

    _guard(debug, body)


@data_app.command("import")
def data_import(
    path: Annotated[Path, typer.Argument(help="dataset file or directory")],
    data_format: Annotated[str, typer.Option("--format", help="data.format")] = "table",
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Load a dataset, gate it and write the canonical tables."""

    def body() -> None:
        from recforge.stages.ingest import run_ingest

        params = load_params(params_file, [f"data.format={data_format}", f"data.path={path}", *(set_ or [])])
        run_ingest(params)
        _describe(params)

    _guard(debug, body)


@data_app.command("add-span")
def data_add_span(
    file: Annotated[Path, typer.Argument(help="a CSV or Parquet file of new events (the loader's columns)")],
    name: Annotated[
        str | None, typer.Option(help="span name (default: the file name); name order is time order")
    ] = None,
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Check FILE and add it to data.spans atomically (recforge.spans)."""

    def body() -> None:
        from recforge.spans import add_span

        params = load_params(params_file, set_ or [])
        record, added = add_span(params, file, name)
        state = "added" if added else "already there (same sha256)"
        console.print(
            f"span {record.name} {state}: {record.events:,} events, time {record.time_min}..{record.time_max}, "
            f"sha256 {record.sha256[:12]}"
        )

    _guard(debug, body)


@data_app.command("export-feedback")
def data_export_feedback(
    since: Annotated[
        int | None,
        typer.Option(min=0, max=2**63 - 1, help="export the events after this mark (default: the last export's)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="span file, .parquet or .csv, never overwritten (default: feedback.spans_dir)"),
    ] = None,
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Write the feedback store's new events as a span and record the new high-water mark (recforge.feedback)."""

    def body() -> None:
        from recforge.feedback import store_from_params

        params = load_params(params_file, set_ or [])
        result = store_from_params(params).export(
            out,
            since_mark=since,
            spans_dir=params.feedback.spans_dir,
            implied_ratings=params.feedback.implied_ratings.model_dump(),
        )
        if result.path is None:
            console.print(f"no events after mark {result.mark_from}: nothing written")
            return
        console.print(
            f"{result.rows:,} events (ids {result.mark_from + 1}..{result.mark_to}) written to {result.path}; "
            f"mark {result.mark_to} recorded. Add it to the training data: recforge data add-span {result.path}"
        )

    _guard(debug, body)


@data_app.command("forget")
def data_forget(
    user: Annotated[str, typer.Argument(help="the user id whose feedback events are deleted")],
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Delete USER's events from the feedback store (and so from every later export); says what it cannot undo."""

    def body() -> None:
        from recforge.feedback import store_from_params

        result = store_from_params(load_params(params_file, set_ or [])).forget(user)
        shown = ", ".join(result.items[:10]) + (f" and {len(result.items) - 10} more" if len(result.items) > 10 else "")
        console.print(
            f"removed {result.removed:,} events of user {result.user_id}" + (f" (items {shown})" if shown else ""),
            markup=False,
            highlight=False,
        )
        console.print(Text(result.cannot_undo), soft_wrap=True, highlight=False)

    _guard(debug, body)


@data_app.command("describe")
def data_describe(
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE), set_: SetOpt = None, debug: DebugOpt = False
) -> None:
    """Counts and density of the canonical tables."""
    _guard(debug, lambda: _describe(load_params(params_file, set_ or [])))


def _describe(params: Params) -> None:
    from recforge.workspace import Workspace

    workspace = Workspace(params)
    inter, items = workspace.interactions, workspace.items
    per_user = inter.groupby("user_id").size()
    table = Table(title=f"dataset ({params.data.format})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = {
        "interactions": f"{len(inter):,}",
        "users": f"{inter['user_id'].nunique():,}",
        "items (catalogue)": f"{len(items):,}",
        "items with interactions": f"{inter['item_id'].nunique():,}",
        "density": f"{len(inter) / max(1, inter['user_id'].nunique() * len(items)):.5f}",
        "interactions per user (median)": f"{per_user.median():.0f}",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)


@app.command()
def models(
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    production: Annotated[
        bool, typer.Option("--production", help="the production registry: versions, blessing, history")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Trained models: their options, tuning trials on validation and the chosen settings."""

    def body() -> None:
        params = load_params(params_file, set_ or [])
        if production:
            _print_production(params)
            return
        root = Path(params.paths.models_dir)
        metas = sorted(root.glob("*/val/meta.json"))
        if not metas:
            raise RecforgeError(f"{root}: no trained models; run `recforge stage train`")
        table = Table(title="trained models (settings chosen on validation)")
        for column in ("model", "plugin", "options", "refit", "tuned on val"):
            table.add_column(column, overflow="fold")
        for path in metas:
            meta = json.loads(path.read_text())
            options = {k: v for k, v in meta["options"].items() if not k.startswith("tune")}
            refit = {k: v for k, v in meta.get("refit_options", {}).items() if meta["options"].get(k) != v}
            tuning = meta.get("tuning")
            tuned = "-"
            if tuning:
                tuned = f"{len(tuning['trials'])} trials, best {tuning['metric']}={tuning['best_score']:.4f}"
            table.add_row(meta["name"], meta["plugin"], json.dumps(options), json.dumps(refit) if refit else "-", tuned)
        console.print(table)
        for path in metas:
            tuning = json.loads(path.read_text()).get("tuning")
            if not tuning:
                continue
            trials = Table(title=f"{path.parent.parent.name}: tuning trials (validation)")
            keys = list(tuning["trials"][0]["options"])
            for column in [*keys, "ndcg@10", "recall@10", "mrr@10", "fit s"]:
                trials.add_column(column, justify="right")
            for trial in sorted(tuning["trials"], key=lambda t: -t.get(tuning["metric"], 0.0)):
                cells = [str(trial["options"][k]) for k in keys]
                cells += [f"{trial.get(m, float('nan')):.4f}" for m in ("ndcg@10", "recall@10", "mrr@10")]
                trials.add_row(*cells, f"{trial['fit_seconds']:.1f}")
            console.print(trials)

    _guard(debug, body)


def _print_production(params: Params) -> None:
    from recforge import production

    body = production.read(params)
    current = production.current(params)
    console.print(f"production: {current.tag if current else 'none'} (registry {production.registry_path(params)})")
    table = Table(title="registered versions")
    for column in ("tag", "production", "decision", "metric", "reason", "trained on spans"):
        table.add_column(column, overflow="fold")
    for tag, version in body["versions"].items():
        blessing = version.get("blessing") or {}
        value = (blessing.get("candidate") or {}).get("value")
        table.add_row(
            tag,
            "yes" if current and current.tag == tag else "",
            blessing.get("decision", "-"),
            f"{blessing.get('metric', '')} {value}" if value is not None else "-",
            blessing.get("reason", "-"),
            ", ".join(version.get("spans") or []) or "-",
        )
    console.print(table)
    history = Table(title="promotion history")
    for column in ("at", "action", "tag", "previous", "run", "reason"):
        history.add_column(column, overflow="fold")
    for entry in body["history"]:
        history.add_row(*(str(entry.get(c) or "-") for c in ("at", "action", "tag", "previous", "run", "reason")))
    console.print(history)


ReasonOpt = Annotated[str, typer.Option("--reason", help="why (recorded in the promotion history)")]


@app.command()
def promote(
    tag: Annotated[str | None, typer.Argument(help="model-store tag (default: the last blessed candidate)")] = None,
    reason: ReasonOpt = "manual promotion",
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Make TAG production (without TAG: the candidate reports/blessing.json blessed)."""

    def body() -> None:
        from recforge import production
        from recforge.blessing import read_blessing

        params = load_params(params_file, set_ or [])
        chosen, why = tag, reason
        if chosen is None:
            blessing = read_blessing(params)
            if blessing["decision"] != "blessed":
                raise RecforgeError(f"the last candidate was not blessed ({blessing['reason']}); name a TAG to force")
            chosen, why = blessing["candidate"]["tag"], f"blessed: {blessing['reason']}"
        entry = production.promote(params, production.check_tag(chosen), reason=why, run=production.run_id())
        console.print(f"production: {entry['tag']} (was {entry['previous'] or 'none'})")

    _guard(debug, body)


@app.command()
def rollback(
    reason: ReasonOpt = "manual rollback",
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Production goes back to the version promoted before the current one."""

    def body() -> None:
        from recforge import production

        params = load_params(params_file, set_ or [])
        entry = production.rollback(params, reason=reason, run=production.run_id())
        console.print(f"production: {entry['tag']} (rolled back from {entry['previous']})")

    _guard(debug, body)


@app.command()
def cycle(
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="run even without a new span")] = False,
    debug: DebugOpt = False,
) -> None:
    """New spans? -> ingest + drift gate -> train -> package -> bless -> promote (exit 0 promoted or not; 2: gate)."""

    def body() -> None:
        from recforge.cycle import run_cycle

        params = load_params(params_file, set_ or [])
        result = run_cycle(params, force=force)
        if not result["ran"]:
            console.print(f"nothing to do: {result['reason']}")
        elif result["promoted"]:
            console.print(f"promoted {result['tag']} ({result['reason']})")
        else:
            console.print(f"not promoted: {result['tag']} {result['decision']} ({result['reason']})")

    _guard(debug, body)


@app.command()
def package(
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    build: Annotated[bool, typer.Option("--build/--no-build", help="also run `bentoml build`")] = True,
    debug: DebugOpt = False,
) -> None:
    """Save the trained pipeline to the BentoML model store and build the Bento (pinned model tag)."""

    def body() -> None:
        from recforge.stages.package import run_package

        params = load_params(params_file, set_ or [])
        result = run_package(params, build=build)
        console.print(
            f"model {result['model_tag']}" + (f"; bento {result['bento_tag']}" if result["bento_tag"] else "")
        )

    _guard(debug, body)


@app.command()
def serve(
    params_file: ParamsOpt = Path(DEFAULT_PARAMS_FILE),
    set_: SetOpt = None,
    port: Annotated[int | None, typer.Option(help="default serve.port")] = None,
    follow: Annotated[
        str | None, typer.Option(help="'production': hot-swap to each new production version (serve.follow)")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Serve the last packaged Bento on serve.host:serve.port (127.0.0.1:3000 by default)."""

    def body() -> None:
        from recforge.bento import serve_command

        if follow is not None and follow not in ("production", "none"):
            raise RecforgeError(f"--follow {follow[:40]!r}: expected 'production' or 'none'")
        overrides = [*(set_ or []), *([f"serve.follow={'null' if follow == 'none' else follow}"] if follow else [])]
        params = load_params(params_file, overrides)
        command, env = serve_command(params, port=port)
        errors.print(f"serving on http://{params.serve.host}:{port or params.serve.port}")
        if params.serve.follow == "production":
            from recforge.production import registry_path

            errors.print(f"following production: {registry_path(params)} every {params.serve.poll_s} s")
        os.execvpe(command[0], command, env)

    _guard(debug, body)


@plugins_app.command("list")
def plugins_list(debug: DebugOpt = False) -> None:
    """Every registered plugin and where it comes from."""

    def body() -> None:
        from recforge import registry

        table = Table(title="recforge plugins")
        for column in ("group", "name", "source"):
            table.add_column(column)
        for group, reg in registry.ALL.items():
            for name, source in reg.view().items():
                table.add_row(group, name, source)
        console.print(table)

    _guard(debug, body)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
