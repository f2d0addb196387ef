"""``orchestrator run | validate | results | compare | ui | predict``.

This is the only layer that writes to the terminal: the library logs, the command line decides
what the user sees. User mistakes end with one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:  # The command line imports the rest where a command needs it.
    from orchestrator.space.distributions import Parameter
    from orchestrator.sweep.schema import BudgetSpec, ScheduleSpec, SearchSpec

EXIT_OK, EXIT_TRIALS_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_engines(args.verbose)
    from orchestrator.scheduling.sweep_runner import HTTP_DEFAULTS

    for name, value in HTTP_DEFAULTS.items():  # A server that is down is said so in seconds.
        os.environ.setdefault(name, value)
    try:
        return int(args.handler(args))
    except OrchestratorError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        from orchestrator.tracking.delivery import journal_folder, waiting_journals

        waiting = sum(waiting_journals().values())
        kept = (
            f", or kept in {journal_folder()} ({waiting} records) until the store answers and "
            "`orchestrator sync` sends them"
            if waiting
            else ""
        )
        print(f"interrupted: finished trials are recorded in MLflow{kept}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `orchestrator results ... | head`: the reader has had enough.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Declarative Keras sweeps, run in parallel on Ray Tune, tracked in MLflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show engine logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a sweep file")
    run.add_argument("sweep", help="path to the sweep file (YAML)")
    run.add_argument("--address", help="join this Ray cluster instead of starting one")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (overrides the sweep file)")
    run.add_argument("--top", type=_positive, default=10, help="leaderboard rows to print")
    run.add_argument(
        "--fresh",
        action="store_true",
        help="train every combination again in a new sweep run (by default a re-run resumes: "
        "combinations already finished are kept)",
    )
    run.set_defaults(handler=_run)

    sync = commands.add_parser(
        "sync", help="send records kept while the tracking server was unreachable"
    )
    sync.add_argument(
        "--tracking-uri",
        help="send only this store's records (default: each to the store it was kept for)",
    )
    sync.set_defaults(handler=_sync)

    validate = commands.add_parser("validate", help="check a sweep file without running it")
    validate.add_argument("sweep", help="path to the sweep file (YAML)")
    validate.add_argument("--show", type=_positive, default=5, help="configurations to list")
    validate.set_defaults(handler=_validate)

    results = commands.add_parser("results", help="the leaderboard of a sweep, from MLflow")
    results.add_argument("name", help="the sweep's name (its MLflow experiment) or its file")
    results.add_argument("--sort", help="metric to rank by (default: the sweep's metric)")
    order = results.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="ascending", action="store_true", default=None)
    order.add_argument("--descending", dest="ascending", action="store_false")
    results.add_argument("--top", type=_positive, help="only the best N trials")
    results.add_argument("--format", choices=("table", "csv", "json"), default="table")
    results.add_argument("--sweep-run", help="a particular execution (default: the latest)")
    results.add_argument("--tracking-uri", help="MLflow tracking URI")
    results.set_defaults(handler=_results)

    compare = commands.add_parser(
        "compare", help="compare the values of one parameter across seeds, with a report"
    )
    compare.add_argument("name", help="the sweep's name (its MLflow experiment) or its file")
    compare.add_argument(
        "--by", default="architecture", help="the parameter to compare (default: architecture)"
    )
    compare.add_argument(
        "--out", help="folder for the HTML report, figures and csv (default: reports/NAME/PARAM)"
    )
    compare.add_argument("--sweep-run", help="a particular execution (default: the latest)")
    compare.add_argument("--tracking-uri", help="MLflow tracking URI")
    compare.set_defaults(handler=_compare)

    ui = commands.add_parser("ui", help="serve the MLflow UI over the sweeps' store")
    ui.add_argument("name", nargs="?", help="open on this sweep (name or file)")
    ui.add_argument("--tracking-uri", help="MLflow tracking URI")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_ui)

    predict = commands.add_parser("predict", help="decode one input with a sweep's best model")
    predict.add_argument("name", help="the sweep's name (its MLflow experiment) or its file")
    predict.add_argument("expression", help="the input, e.g. '10+1000'")
    predict.add_argument("--base", default="d", help="b, o, d or h (or 2, 8, 10, 16)")
    predict.add_argument("--tracking-uri", help="MLflow tracking URI")
    predict.set_defaults(handler=_predict)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _quiet_engines(verbose: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if verbose:
        return
    # Failed trials are summarised by us; Tune's own tracebacks would bury the table.
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Each request MLflow retries while a server is away: our one warning says it instead.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def _run(args: argparse.Namespace) -> int:
    from orchestrator.cli.progress import SweepProgress
    from orchestrator.scheduling import run_sweep
    from orchestrator.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    sweep.check()
    trials, size = sweep.planned_trials, sweep.grid_size
    space = "an infinite space" if size is None else f"a grid of {size}"
    print(f"sweep '{sweep.name}': {trials} trials of {space}", file=sys.stderr)
    with SweepProgress(trials, sweep.spec.metric, sweep.spec.mode) as progress:

        def resumed(result: Any) -> None:
            progress.say(
                f"resuming sweep run {result.sweep_run_id}: {result.earlier} of "
                f"{result.planned} trials were already done and are kept; {result.closed} runs "
                "left running by a stopped sweep were closed as killed (--fresh trains "
                "everything again)"
            )

        result = run_sweep(
            sweep,
            address=args.address,
            tracking_uri=args.tracking_uri,
            on_trial_end=progress.trial_ended,
            verbose=args.verbose,
            fresh=args.fresh,
            on_resume=resumed,
        )
    if result.undelivered:
        print(
            f"warning: MLflow at {result.tracking_uri} did not answer; {result.undelivered} "
            f"records of this sweep are kept in {result.journal} and are sent by the next "
            "`orchestrator run` or `orchestrator sync`",
            file=sys.stderr,
        )
    else:
        _print_leaderboard(result.tracking_uri, result.experiment, args.top, result.sweep_run_id)
    failed, diverged = result.count("failed"), result.count("diverged")
    stopped = result.count("stopped")
    if result.ended_early and not result.ended_early.startswith("metric:"):
        print(f"\nthe sweep ended early: {result.ended_early}")
    print(
        f"\n{result.count('finished')} finished, "
        + (f"{stopped} stopped early, " if stopped else "")
        + f"{failed} failed, {diverged} diverged "
        f"in {result.wall_seconds:.0f} s; runs in {result.tracking_uri} "
        f"(experiment '{result.experiment}')"
    )
    if result.best is not None:
        best = result.best
        value = best.score(sweep.spec.metric)
        where = (
            "not in MLflow yet: sent with the rest by `orchestrator sync`"
            if best.run_id.startswith("pending-")
            else f"run {best.run_id}"
        )
        print(f"best: {best.name} {sweep.spec.metric}={value:.4f} ({where})")
    return EXIT_TRIALS_FAILED if result.failed or result.undelivered else EXIT_OK


def _sync(args: argparse.Namespace) -> int:
    """Each journal goes to the store it names; with a URI given, only that store's."""
    from orchestrator.tracking import resolve_tracking_uri
    from orchestrator.tracking.delivery import journal_folder, replay_journals, waiting_journals
    from orchestrator.tracking.store import TrackingStore

    kept = waiting_journals()
    if args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        uris = [resolve_tracking_uri(args.tracking_uri)]
    else:
        uris = sorted(kept)
    if not uris:
        print(f"nothing waits in {journal_folder()}")
        return EXIT_OK
    still = 0
    for uri in uris:
        sent, waiting = replay_journals(TrackingStore(uri).client, uri)
        still += waiting
        print(f"{sent} records sent to {uri}; {waiting} journals still wait in {journal_folder()}")
    others = sorted(set(kept) - set(uris))
    if others:
        print(
            f"journals for other stores wait too ({', '.join(others)}): `orchestrator sync` "
            "without a tracking URI sends each to its own"
        )
    return EXIT_TRIALS_FAILED if still else EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from orchestrator.space.search_space import continuous
    from orchestrator.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    sweep.check()
    spec, space = sweep.spec, sweep.parameters()
    print(f"{sweep.source}: valid")
    print(f"  name: {spec.name}   metric: {spec.metric} ({spec.mode})")
    for parameter in space:
        print(f"  {parameter.name}: {_described(parameter)}")
    size = sweep.grid_size
    shown_size = f"infinite (continuous: {', '.join(continuous(space))})" if size is None else size
    print(f"  grid size: {shown_size}   search: {_search_described(spec.search)}")
    if spec.repeats > 1:
        seeds = ", ".join(map(str, sweep.repeat_seeds))
        print(f"  repeats: {spec.repeats} per combination (seeds {seeds})")
    if spec.schedule is not None:
        print(f"  schedule: {_schedule_described(spec.schedule)}")
    if any(limit is not None for limit in spec.budget.model_dump().values()):
        print(f"  budget: {_budget_described(spec.budget, spec.metric, spec.mode)}")
    if spec.search.method == "tpe":
        print(f"  trials to run: {sweep.planned_trials}")
        print("    configurations: chosen during the sweep by TPE, from the results so far")
    else:
        combinations = sweep.combinations()
        repeats = _repeats_described(combinations, spec.repeats)
        print(f"  trials to run: {len(combinations)}{repeats}")
        for index, combination in enumerate(combinations[: args.show]):
            shown = ", ".join(f"{k}={_value_shown(v)}" for k, v in combination.items())
            print(f"    {index}: {shown}")
        if len(combinations) > args.show:
            print(f"    ... and {len(combinations) - args.show} more")
    if spec.schedule is None and (size is None or size > 50):
        print(
            f"  tip: a space of {'infinitely many' if size is None else size} combinations "
            "and no schedule; 'schedule: asha' stops poor trials early and spends the epochs "
            "on the promising ones"
        )
    return EXIT_OK


def _repeats_described(combinations: list[dict[str, Any]], repeats: int) -> str:
    """How the trials of a sweep with repeats are made up, " (4 combinations x 3 seeds)"."""
    from orchestrator.space.repeats import SEED, group_hash

    if repeats == 1:
        return ""
    seeds = {combination[SEED] for combination in combinations}
    groups = {group_hash(combination, repeated=True) for combination in combinations}
    return f" ({len(groups)} combinations x {len(seeds)} seeds)"


def _value_shown(value: Any) -> str:
    """A parameter's value, a drawn float to six significant digits."""
    from orchestrator.space.grid import readable_value

    return f"{value:.6g}" if isinstance(value, float) else str(readable_value(value))


def _described(parameter: Parameter) -> str:
    """One parameter for ``validate``: its values or bounds, then its condition."""
    from orchestrator.space.grid import readable_value

    if parameter.kind == "choice":
        values = ", ".join(str(readable_value(value)) for value in parameter.values)
        text = f"{len(parameter.values)} value(s): {values}"
    else:
        text = f"{parameter.kind} from {parameter.low:g} to {parameter.high:g}"
        if parameter.step is not None and not (parameter.kind == "int" and parameter.step == 1):
            text += f", step {parameter.step:g}"
        if parameter.kind == "int" and parameter.log:
            text += ", log-spaced"
        count = parameter.count()
        text += " (continuous)" if count is None else f" ({count} values)"
    if parameter.when:
        conditions = [
            f"{name} is {values[0]}"
            if len(values) == 1
            else f"{name} is {' or '.join(map(str, values))}"
            for name, values in parameter.when.items()
        ]
        text += f"   only when {' and '.join(conditions)}"
    return text


def _search_described(search: SearchSpec) -> str:
    words: list[str] = [search.method]
    if search.trials is not None:
        words.append(f"{search.trials} trials")
    if search.fraction is not None:
        words.append(f"fraction {search.fraction:g}")
    if search.seed is not None:
        words.append(f"seed {search.seed}")
    return ", ".join(words)


def _schedule_described(schedule: ScheduleSpec) -> str:
    if schedule.scheduler == "pbt":
        words = ["pbt", f"perturbation interval {schedule.perturbation_interval} epoch(s)"]
        if schedule.mutations:
            words.append(f"mutations: {', '.join(schedule.mutations)}")
        return ", ".join(words)
    words = [schedule.scheduler, f"grace period {schedule.grace_period} epoch(s)"]
    if schedule.scheduler != "median":
        words.append(f"reduction factor {schedule.reduction_factor:g}")
    if schedule.max_epochs is not None:
        words.append(f"at most {schedule.max_epochs} epochs")
    return ", ".join(words)


def _budget_described(budget: BudgetSpec, metric: str, mode: str) -> str:
    words = []
    if budget.trials is not None:
        words.append(f"at most {budget.trials} trials")
    if budget.minutes is not None:
        words.append(f"at most {budget.minutes:g} minutes")
    if budget.target is not None:
        words.append(
            f"until a trial reaches {metric} {'>=' if mode == 'max' else '<='} {budget.target:g}"
        )
    return ", ".join(words)


def _results(args: argparse.Namespace) -> int:
    uri, experiment = _locate(args.name, args.tracking_uri)
    from orchestrator.tracking import leaderboard

    table = leaderboard(uri, experiment, args.sort, args.ascending, args.sweep_run)
    if args.format == "table":
        print(_as_text(table, args.top))
        return EXIT_OK
    if args.top:
        table = table.head(args.top)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    uri, experiment = _locate(args.name, args.tracking_uri)
    from orchestrator.reports import compare_sweep
    from orchestrator.reports.report import REPORT_FILE, displayed

    result = compare_sweep(uri, experiment, args.by, args.out, args.sweep_run)
    direction = "higher is better" if result.mode == "max" else "lower is better"
    print(
        f"{result.sweep}: {result.by} compared by {result.metric} ({direction}) over "
        f"{result.trials} trials; each value's best configuration, mean over seeds with its "
        "95% t-interval"
    )
    print(displayed(result.table, result.by).to_string(index=False))
    print(f"\n{result.verdict}")
    where = f"\nreport: {result.folder / REPORT_FILE}"
    if result.logged:
        where += f" (also on sweep run {result.sweep_run_id}, under {result.artifact_dir}/)"
    print(where)
    return EXIT_OK


def _ui(args: argparse.Namespace) -> int:
    if args.name:
        uri, experiment = _locate(args.name, args.tracking_uri)
    else:
        from orchestrator.tracking import resolve_tracking_uri

        uri, experiment = resolve_tracking_uri(args.tracking_uri), None
    _check_port_free(args.host, args.port)
    address = f"http://{args.host}:{args.port}"
    if experiment:
        from orchestrator.tracking import TrackingStore

        experiment_id = TrackingStore(uri).experiment_id(experiment, create=False)
        # The experiment's runs: its bare page opens on MLflow's GenAI overview instead.
        address += f"/#/experiments/{experiment_id}/runs"
    print(f"MLflow UI on {address} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", args.host, "--port", str(args.port)]
    # Browsing needs no background job runners (eight more processes); and the UI replaces
    # this process, so a signal that stops `orchestrator ui` stops the server itself.
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    os.execve(sys.executable, command, environment)
    return EXIT_OK  # Not reached: execve does not return.


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OrchestratorError(
                f"--port {port}: {host}:{port} cannot be used ({error.strerror}); "
                "choose another with --port"
            ) from None


def _predict(args: argparse.Namespace) -> int:
    uri, experiment = _locate(args.name, args.tracking_uri)
    from orchestrator.tasks.predict import predict_one

    print(predict_one(uri, experiment, args.expression, args.base))
    return EXIT_OK


def _locate(name: str, tracking_uri: str | None) -> tuple[str, str]:
    """The tracking URI and experiment for a sweep given by its name or by its file.

    Only reads: an SQLite store that does not exist is reported, not created.
    """
    from orchestrator.tracking import resolve_tracking_uri

    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        from orchestrator.sweep import load_sweep

        spec = load_sweep(name).spec
        uri, experiment = (
            resolve_tracking_uri(tracking_uri, spec.tracking.uri),
            spec.experiment_name,
        )
    else:
        uri, experiment = resolve_tracking_uri(tracking_uri), name
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise OrchestratorError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}; run a sweep here first, "
            "or give --tracking-uri"
        )
    return uri, experiment


def _print_leaderboard(uri: str, experiment: str, top: int, sweep_run_id: str) -> None:
    from orchestrator.tracking import leaderboard

    table = leaderboard(uri, experiment, sweep_run_id=sweep_run_id)
    print(_as_text(table, top))
    unusable = table["status"].isin(["failed", "diverged"]) if "status" in table else None
    failed = table[unusable] if unusable is not None else table.iloc[0:0]
    for _, row in failed.iterrows():
        print(f"{row['status']}: {row['trial']}: {row.get('error', '')}")


def _as_text(table: Any, top: int | None = None) -> str:
    """The leaderboard for a terminal, best ``top`` rows; parameters equal in every trial (of
    the whole table, not only the rows shown) are listed once below it."""
    import pandas as pd

    if table.empty:
        return "(no trials)"
    fixed = [
        name
        for name in table.attrs.get("parameters", [])
        if name in table and table[name].nunique(dropna=False) == 1 and len(table) > 1
    ]
    hidden = [c for c in ("run_id", "error") if c in table.columns] + fixed
    hidden += _accuracy_aliases(table)
    shown = table.drop(columns=hidden)
    if top:
        shown = shown.head(top).copy()
    # Counts are nullable integers, whose missing values would print as <NA>; "-" as for floats.
    for column in [c for c in shown.columns if str(shown[c].dtype) == "Int64"]:
        shown[column] = [str(v) if v is not pd.NA else "-" for v in shown[column]]
    text = str(shown.to_string(index=False, float_format=_float, na_rep="-"))
    if len(shown) < len(table):
        text += f"\n… and {len(table) - len(shown)} more (--top N shows more)"
    if fixed:
        same = ", ".join(f"{name}={table[name].iloc[0]}" for name in fixed)
        text += f"\nsame in every trial: {same}"
    return text


def _accuracy_aliases(table: Any) -> list[str]:
    """Columns that repeat another under Keras's other accuracy spelling (``val_accuracy`` beside
    ``val_acc``): a trial reports the sweep's metric under both names, the table shows it once."""
    aliases = []
    for stem in ("val_", ""):
        short, long = f"{stem}acc", f"{stem}accuracy"
        if short in table and long in table and table[short].equals(table[long]):
            aliases.append(long)
    return aliases


def _float(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}" if abs(value) < 1e5 or abs(value) >= 1e15 else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
