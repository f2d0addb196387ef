"""What a sweep costs on top of its training: our sweep against a bare loop and talos.Scan.

    python3 benchmarks/overhead.py                        # the four modes, multibase workload
    python3 benchmarks/overhead.py --scaling 8 32 128     # tiny trials, growing sweeps
    python3 benchmarks/overhead.py --memory 60            # C08: worker memory over 60 trials
    python3 benchmarks/overhead.py --trials 8 16          # the four modes on 8 and 16 combinations
    python3 benchmarks/overhead.py --all --write          # all of it, into RESULTS.md

Every mode trains the same combinations of the same model function on the same data, each in a
fresh Python process, so none inherits another's imports or compiled graphs:

- ``loop``: a bare Python loop calling the model function for each combination (the floor);
- ``talos``: ``talos.Scan`` of the installed talos package;
- ``sweep-1``: our sweep, one trial at a time, each given every core;
- ``sweep-N``: our sweep, one trial per core, each with one TensorFlow thread pool of one.

The sweeps go through ``run_sweep`` on a sweep file, as ``orchestrator run`` does: Ray's
start-up, the data function and the MLflow writes are all counted, as a user pays them. Wall
time is the whole child process, interpreter start and exit included. Training time is the
time inside the model function (the runner's ``train_seconds`` for our sweeps). Per-trial
overhead is ``(wall - training / concurrency) / trials``: with trials side by side, training
time divides among the slots. Peak memory is sampled every 0.1 s: the driver (the process
itself for the loop and Talos) and each of Ray's trial workers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from results_file import replace_section  # beside this script

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Orchestration overhead"
MODES = ("loop", "talos", "sweep-1", "sweep-N")
MB = 1024 * 1024
#: ``--tracking-uri``: the MLflow server our sweeps log to, instead of a new SQLite store.
TRACKING_URI: str | None = None

#: The reduced multibase-addition grid: 2 x 2 x 2 = 8 combinations of small models; 16 with
#: four learning rates (see :func:`multibase_work`).
MULTIBASE = {
    "model": "orchestrator.tasks.multibase_addition:build_and_fit",
    "data": "orchestrator.tasks.multibase_addition:load_data",
    "params": {
        "architecture": ["repeat_vector", "encoder_decoder"],
        "lr": [0.003, 0.01],
        "layer_1_text_input_neuron": [16],
        "layer_1_base_input_neuron": [8],
        "concatenated_layer_neuron": [16, 32],
        "epochs": [2],
        "batch": [64],
    },
}
#: A classifier that trains in a fraction of a second: what is left is orchestration.
TINY = {
    "model": str(ROOT / "tests" / "tiny_task.py") + ":classifier",
    "data": str(ROOT / "tests" / "tiny_task.py") + ":blobs",
}


# ---------------------------------------------------------------------------------------------
# The child process: one mode, one measurement, printed as a JSON line.


class MemorySampler:
    """Peak resident memory of this process and of Ray's processes under it, every 0.1 s."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self.driver = 0
        self.workers: dict[int, int] = {}  # pid -> peak RSS of each trial worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> dict[int, int]:
        """RSS now of each Ray worker holding a trial (``ray::ImplicitFunc``), not Ray's own
        agents."""
        import psutil

        now: dict[int, int] = {}
        try:
            self.driver = max(self.driver, self._me.memory_info().rss)
            children = self._me.children(recursive=True)
        except psutil.Error:
            return now
        for child in children:
            try:
                title = " ".join(child.cmdline())
                if title.startswith("ray::ImplicitFunc"):  # Tune's function trainable.
                    now[child.pid] = child.memory_info().rss
            except psutil.Error:
                continue
        for pid, rss in now.items():
            self.workers[pid] = max(self.workers.get(pid, 0), rss)
        return now

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()


def _combinations(params: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(params)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*params.values())
    ]


def _load(reference: str) -> Any:
    from orchestrator.sweep.imports import resolve_callable

    return resolve_callable(reference, ROOT)


def _timed(model_fn: Any, seconds: list[float]) -> Any:
    def timed(x_train: Any, y_train: Any, x_val: Any, y_val: Any, params: dict[str, Any]) -> Any:
        started = time.perf_counter()
        try:
            return model_fn(x_train, y_train, x_val, y_val, params)
        finally:
            seconds.append(time.perf_counter() - started)

    return timed


def _run_loop(work: dict[str, Any], sampler: MemorySampler) -> dict[str, Any]:
    data = _load(work["data"])(**work["options"])
    model_fn = _load(work["model"])
    seconds: list[float] = []
    timed = _timed(model_fn, seconds)
    for combination in _combinations(work["params"]):
        import keras

        keras.backend.clear_session()
        timed(*data, dict(combination))
    return {"trials": len(seconds), "train_seconds": sum(seconds), "concurrency": 1}


def _run_talos(work: dict[str, Any], sampler: MemorySampler, folder: Path) -> dict[str, Any]:
    import talos

    x, y, x_val, y_val = _load(work["data"])(**work["options"])
    seconds: list[float] = []
    os.chdir(folder)  # Talos writes its experiment folder in the working directory.
    talos.Scan(
        x,
        y,
        work["params"],
        _timed(_load(work["model"]), seconds),
        "overhead",
        x_val=x_val,
        y_val=y_val,
        disable_progress_bar=True,
    )
    return {"trials": len(seconds), "train_seconds": sum(seconds), "concurrency": 1}


def _run_sweep(
    work: dict[str, Any], sampler: MemorySampler, folder: Path, concurrent: int
) -> dict[str, Any]:
    import yaml

    from orchestrator import load_sweep, run_sweep

    cores = os.cpu_count() or 1
    spec = {
        "name": "overhead",
        "model": work["model"],
        "data": {"function": work["data"], "options": work["options"]},
        "params": work["params"],
        "resources": {
            "cpus_per_trial": cores // concurrent,
            "max_concurrent_trials": concurrent,
        },
    }
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    trail: list[dict[int, int]] = []  # Worker RSS at each trial's end (C08).

    def ended(outcome: Any) -> None:
        trail.append(sampler.sample())

    result = run_sweep(
        load_sweep(path),
        tracking_uri=work.get("tracking_uri") or f"sqlite:///{folder / 'mlflow.db'}",
        fresh=True,
        on_trial_end=ended,
    )
    train = [o.metrics.get("train_seconds", 0.0) for o in result.outcomes]
    return {
        "trials": result.count("finished"),
        "train_seconds": sum(train),
        "concurrency": concurrent,
        "sweep_seconds": result.wall_seconds,
        "trail": [{str(pid): rss for pid, rss in sample.items()} for sample in trail],
    }


def child(mode: str, work: dict[str, Any]) -> dict[str, Any]:
    """Run one mode in this process and measure it."""
    with tempfile.TemporaryDirectory(prefix="overhead-") as name, MemorySampler() as sampler:
        folder = Path(name)
        os.environ["ORCHESTRATOR_HOME"] = str(folder / "home")
        if mode == "loop":
            measured = _run_loop(work, sampler)
        elif mode == "talos":
            measured = _run_talos(work, sampler, folder)
        else:
            concurrent = 1 if mode == "sweep-1" else os.cpu_count() or 1
            measured = _run_sweep(work, sampler, folder, concurrent)
        sampler.sample()
    measured["driver_peak_mb"] = sampler.driver / MB
    measured["worker_peak_mb"] = [rss / MB for rss in sampler.workers.values()]
    return measured


# ---------------------------------------------------------------------------------------------
# The parent: fresh processes, repetitions, tables.


def measure(mode: str, work: dict[str, Any], repeat: int, timeout: float) -> dict[str, Any]:
    """Run ``mode`` ``repeat`` times, each in a fresh process; keep the fastest run."""
    runs = []
    if TRACKING_URI and mode.startswith("sweep"):
        work = {**work, "tracking_uri": TRACKING_URI}
    for _ in range(repeat):
        command = [sys.executable, __file__, "--child", mode, "--work", json.dumps(work)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        started = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        wall = time.perf_counter() - started
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            raise RuntimeError(f"{mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        run = json.loads(lines[-1].removeprefix("RESULT "))
        run["wall"] = wall
        runs.append(run)
        train = run["train_seconds"]
        print(
            f"  {mode}: {run['trials']} trials, wall {wall:.1f} s, training {train:.1f} s",
            file=sys.stderr,
        )
    best = min(runs, key=lambda run: run["wall"])
    best["walls"] = [run["wall"] for run in runs]
    trials = max(1, best["trials"])
    best["overhead_per_trial"] = (
        best["wall"] - best["train_seconds"] / best["concurrency"]
    ) / trials
    return best


def _row(mode: str, run: dict[str, Any], loop: dict[str, Any] | None, talos: Any) -> list[str]:
    workers = run["worker_peak_mb"]
    return [
        mode,
        str(run["trials"]),
        f"{run['wall']:.1f}",
        " / ".join(f"{wall:.1f}" for wall in run["walls"]),
        f"{run['train_seconds']:.1f}",
        f"{run['overhead_per_trial']:.2f}",
        f"{run['driver_peak_mb']:.0f}",
        f"{max(workers):.0f} ({len(workers)})" if workers else "-",
        f"{run['wall'] / loop['wall']:.2f}" if loop else "-",
        f"{run['wall'] / talos['wall']:.2f}" if talos else "-",
    ]


COLUMNS = [
    "mode",
    "trials",
    "wall s",
    "walls s (each run)",
    "training s",
    "overhead s/trial",
    "driver peak MB",
    "worker peak MB (workers)",
    "x bare loop",
    "x talos.Scan",
]


def markdown(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def compare(work: dict[str, Any], modes: list[str], repeat: int) -> str:
    runs = {mode: measure(mode, work, repeat, timeout=600) for mode in modes}
    loop, talos = runs.get("loop"), runs.get("talos")
    rows = [_row(mode, run, loop, talos) for mode, run in runs.items()]
    return markdown(COLUMNS, rows)


def scaling(sizes: list[int], repeat: int) -> str:
    rows = []
    runs: dict[str, list[tuple[int, dict[str, Any]]]] = {"sweep-1": [], "sweep-N": []}
    for size in sizes:
        work = tiny_work(size)
        for mode in runs:
            run = measure(mode, work, repeat, timeout=900)
            runs[mode].append((size, run))
            orchestration = run["wall"] - run["train_seconds"] / run["concurrency"]
            rows.append(
                [
                    str(size),
                    mode,
                    f"{run['wall']:.1f}",
                    f"{run['train_seconds']:.1f}",
                    f"{run['overhead_per_trial']:.3f}",
                    f"{size / orchestration:.1f}",
                    f"{size / run['wall']:.1f}",
                    f"{run['driver_peak_mb']:.0f}",
                ]
            )
    columns = [
        "trials",
        "mode",
        "wall s",
        "training s",
        "overhead s/trial",
        "trials/s of orchestration",
        "trials/s overall",
        "driver peak MB",
    ]
    return markdown(columns, rows) + "\n\n" + _further_trials(runs)


def _further_trials(runs: dict[str, list[tuple[int, dict[str, Any]]]]) -> str:
    """What each further trial costs between two sweep sizes: the start-up drops out, what is
    left is the sustained rate of orchestration."""
    rows = []
    for mode, sized in runs.items():
        for (small, before), (large, after) in itertools.pairwise(sized):
            trials = large - small
            wall = after["wall"] - before["wall"]
            training = (after["train_seconds"] - before["train_seconds"]) / after["concurrency"]
            orchestration = (wall - training) / trials
            rows.append(
                [
                    f"{small} -> {large}",
                    mode,
                    f"{wall:.1f}",
                    f"{training:.1f}",
                    f"{orchestration:.3f}",
                    f"{1 / orchestration:.1f}" if orchestration > 0 else "-",
                    f"{trials / wall:.1f}",
                ]
            )
    columns = [
        "trials",
        "mode",
        "more wall s",
        "more training s (per slot)",
        "orchestration s per further trial",
        "sustained trials/s of orchestration",
        "sustained trials/s overall",
    ]
    return markdown(columns, rows)


def memory(trials: int) -> tuple[str, dict[str, Any]]:
    """C08: each worker's RSS at the end of every trial it ran, first vs last vs max."""
    run = measure("sweep-N", tiny_work(trials), 1, timeout=900)
    series: dict[str, list[float]] = {}
    for sample in run["trail"]:
        for pid, rss in sample.items():
            series.setdefault(pid, []).append(rss / MB)
    rows = []
    for pid, values in sorted(series.items()):
        if len(values) < 4:
            continue
        quarter = max(1, len(values) // 4)
        rows.append(
            [
                pid,
                str(len(values)),
                f"{values[0]:.0f}",
                f"{values[-1]:.0f}",
                f"{max(values):.0f}",
                f"{statistics.mean(values[:quarter]):.0f}",
                f"{statistics.mean(values[-quarter:]):.0f}",
            ]
        )
    columns = [
        "worker pid",
        "samples",
        "first MB",
        "last MB",
        "max MB",
        "first-quarter mean MB",
        "last-quarter mean MB",
    ]
    return markdown(columns, rows), run


def multibase_work(trials: int, rows: int) -> dict[str, Any]:
    """The reduced multibase grid of 8 or 16 combinations on ``rows`` rows."""
    learning_rates = {8: [0.003, 0.01], 16: [0.001, 0.003, 0.01, 0.03]}[trials]
    params = {**MULTIBASE["params"], "lr": learning_rates}
    return {**MULTIBASE, "params": params, "options": {"n_samples": rows, "seed": 0}}


def tiny_work(trials: int) -> dict[str, Any]:
    """``trials`` combinations of the tiny classifier (units 1..trials), one epoch each."""
    return {
        **TINY,
        "options": {"n": 200},
        "params": {"units": list(range(1, trials + 1)), "epochs": [1], "batch_size": [64]},
    }


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            platform.processor() or platform.machine(),
        )
    except OSError:
        model = platform.machine()
    import psutil

    memory_gb = psutil.virtual_memory().total / 1024**3
    return f"{model}, {os.cpu_count()} cores, {memory_gb:.0f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=3000, help="multibase rows (default 3000)")
    parser.add_argument(
        "--trials",
        type=int,
        nargs="+",
        choices=(8, 16),
        help="multibase grids of these sizes (default 8; 8 and 16 with --all)",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeat", type=int, default=2, help="runs of each mode; best kept")
    parser.add_argument("--scaling", type=int, nargs="*", help="tiny sweeps of these sizes")
    parser.add_argument("--memory", type=int, help="C08: tiny trials in the same workers")
    parser.add_argument(
        "--all", action="store_true", help="compare 8 and 16, scaling 8 32 128, memory 60"
    )
    parser.add_argument(
        "--tracking-uri",
        help="our sweeps log to this MLflow server (default: a new SQLite store each run)",
    )
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    args = parser.parse_args()

    if args.child:
        print("RESULT " + json.dumps(child(args.child, json.loads(args.work))), flush=True)
        return 0

    global TRACKING_URI
    TRACKING_URI = args.tracking_uri
    load = os.getloadavg()
    sections = []
    if args.all or args.trials or (args.scaling is None and args.memory is None):
        for trials in args.trials or ([8, 16] if args.all else [8]):
            table = compare(multibase_work(trials, args.rows), args.modes, args.repeat)
            sections.append(
                f"{trials} combinations of the multibase-addition task ({args.rows} rows, "
                f"2 epochs, widths 8-32), best of {args.repeat} runs per mode:\n\n{table}"
            )
    if args.all or args.scaling:
        sizes = args.scaling or [8, 32, 128]
        table = scaling(sizes, args.repeat)
        sections.append(f"Tiny classifier trials (one epoch of 150 rows):\n\n{table}")
    if args.all or args.memory:
        trials = args.memory or 60
        table, _ = memory(trials)
        sections.append(
            f"C08: {trials} tiny trials on {os.cpu_count()} reused workers, each worker's RSS "
            f"at the end of each trial it ran:\n\n{table}"
        )
    after = os.getloadavg()
    command = "python3 benchmarks/overhead.py " + " ".join(sys.argv[1:])
    text = (
        f"{HEADING}\n\n`{command}` on {machine()}, {time.strftime('%Y-%m-%d')}; load average "
        f"{load[0]:.2f} before, {after[0]:.2f} after.\n\n" + "\n\n".join(sections)
    )
    print(text)
    if args.write:
        replace_section(HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
