"""Train one configuration of the flagship task on a wall-clock budget: val_exact against time.

    python3 benchmarks/train_longer.py --minutes 5            # a short probe, nothing written
    python3 benchmarks/train_longer.py --minutes 45 --write   # the long run, into RESULTS.md

The task is the full one: operands up to 255, all four bases, rows from the task's own
``load_data``. Training runs epoch after epoch until the budget is spent (the epoch under way
when it runs out is cut short and still measured) or ``--target`` val_exact is reached. Each
epoch prints a row: epochs so far, cumulative wall time, training loss, val_acc, val_exact (the
fraction of validation sums decoded entirely right), learning rate and the 1-minute load
average, since the machine may be shared. Ctrl-C stops the run and keeps what was measured.

With ``--write`` the table, the machine and the command replace the section
"Training the winner longer" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# After the log level, which TensorFlow reads on import.
import keras
import tensorflow as tf
from results_file import RESULTS, replace_section  # beside this script

from orchestrator.tasks.multibase_addition import build_and_fit, load_data

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Training the winner longer"
COLUMNS = ("epoch", "wall s", "loss", "val_acc", "val_exact", "lr", "load")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget")
    parser.add_argument("--target", type=float, default=0.99, help="stop at this val_exact")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of data, both sets")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    parser.add_argument("--reverse-text", action="store_true", help="feed expressions reversed")
    parser.add_argument("--reverse-sum", action="store_true", help="predict the ones digit first")
    parser.add_argument(
        "--architecture", default="encoder_decoder", choices=("encoder_decoder", "repeat_vector")
    )
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--text-units", type=int, default=128)
    parser.add_argument("--base-units", type=int, default=16)
    parser.add_argument("--merged-units", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--base-to-encoder", action="store_true", help="feed the base with every character"
    )
    parser.add_argument("--clipnorm", type=float, default=None)
    parser.add_argument(
        "--lr-patience", type=int, default=None, help="halve lr after this many flat epochs"
    )
    parser.add_argument("--lr-min", type=float, default=0.0, help="floor of the halvings")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow threads (1-2)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # Threads are fixed before TensorFlow runs anything, so the run leaves room for other work.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    data_options = {
        "n_samples": args.rows,
        "max_operand": 255,
        "terms": 2,
        "bases": ["b", "o", "d", "h"],
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "reverse_text": args.reverse_text,
        "reverse_sum": args.reverse_sum,
    }
    params: dict[str, Any] = {
        "architecture": args.architecture,
        "lr": args.lr,
        "layer_1_text_input_neuron": args.text_units,
        "layer_1_base_input_neuron": args.base_units,
        "concatenated_layer_neuron": args.merged_units,
        "epochs": 100_000,  # the budget stops training, not the epoch count
        "batch": args.batch,
        "base_to_encoder": args.base_to_encoder,
        "clipnorm": args.clipnorm,
        "lr_patience": args.lr_patience,
        "lr_min": args.lr_min,
    }

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    x_train, y_train, x_val, y_val = load_data(**data_options)
    keras.utils.set_random_seed(args.seed)
    budget = Budget(args.minutes * 60.0, args.target, -(-len(y_train) // args.batch))
    print(
        f"{len(y_train)} training and {len(y_val)} validation rows; "
        f"budget {args.minutes:g} min; params {params}",
        file=sys.stderr,
    )
    print(format_row(COLUMNS), flush=True)
    try:
        build_and_fit(x_train, y_train, x_val, y_val, params, callbacks=[budget])
    except KeyboardInterrupt:
        print("interrupted; keeping the epochs measured so far", file=sys.stderr)

    if not budget.rows:
        print("no epoch finished; nothing to record", file=sys.stderr)
        return 1
    if args.write:
        replace_section(
            HEADING, section(args, budget, started, load_before, os.getloadavg()[0], tf_threads())
        )
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


class Budget(keras.callbacks.Callback):
    """Record each epoch; stop when the wall-clock budget is spent or val_exact hits a target.

    An epoch is not started when the last one suggests it would overrun the budget; one that
    overruns all the same (the machine got busier) is cut at the next batch and still measured,
    as a fraction of an epoch.
    """

    def __init__(self, seconds: float, target: float, steps_per_epoch: int) -> None:
        super().__init__()
        self.seconds = seconds
        self.target = target
        self.steps_per_epoch = steps_per_epoch
        self.rows: list[dict[str, float]] = []
        self.reason = "budget spent"
        self._epochs = 0.0
        self._steps = 0
        self._start = self._epoch_start = time.perf_counter()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps += 1
        if time.perf_counter() - self._start > self.seconds:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        now = time.perf_counter()
        self._epochs += self._steps / self.steps_per_epoch
        row = {
            "epoch": round(self._epochs, 2),
            "wall s": now - self._start,
            "loss": float(logs.get("loss", float("nan"))),
            "val_acc": float(logs.get("val_acc", float("nan"))),
            "val_exact": float(logs.get("val_exact", float("nan"))),
            "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "load": os.getloadavg()[0],
        }
        self.rows.append(row)
        print(format_row(row), flush=True)

        if row["val_exact"] >= self.target:
            self.reason = f"val_exact reached {self.target}"
            self.model.stop_training = True
        elif (now - self._start) + (now - self._epoch_start) > self.seconds:
            self.model.stop_training = True


def format_row(row: Any) -> str:
    if isinstance(row, tuple):
        return "| " + " | ".join(row) + " |"
    cells = [
        f"{row['epoch']:g}",
        f"{row['wall s']:.0f}",
        f"{row['loss']:.4f}",
        f"{row['val_acc']:.4f}",
        f"{row['val_exact']:.4f}",
        f"{row['lr']:.2g}",
        f"{row['load']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def tf_threads() -> str:
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return f"TensorFlow {tf.__version__}, {intra} intra-op and {inter} inter-op threads"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def section(
    args: argparse.Namespace,
    budget: Budget,
    started: str,
    load_before: float,
    load_after: float,
    threads: str,
) -> str:
    rows = budget.rows
    best = max(rows, key=lambda row: row["val_exact"])
    command = "python3 benchmarks/train_longer.py " + shlex.join(sys.argv[1:])
    n_val = round(args.rows * args.val_fraction)
    lines = [
        HEADING,
        "",
        f"`{command}`, started {started}, on {cpu_model()} ({os.cpu_count()} cores visible), "
        f"{threads}. Load average {load_before:.2f} at the start, {load_after:.2f} at the end "
        "(other work shared the machine; the `load` column is the 1-minute load at each epoch).",
        "",
        f"{args.architecture}, {args.rows - n_val} training and {n_val} validation rows "
        f"(operands up to 255, bases b, o, d, h{options_note(args)}), "
        f"lr {args.lr:g}, widths {args.text_units}/{args.base_units}/{args.merged_units}, "
        f"batch {args.batch}, clipnorm {args.clipnorm}, {schedule_note(args)}. "
        f"Stopped: {budget.reason}, after {rows[-1]['epoch']:g} epochs in "
        f"{rows[-1]['wall s']:.0f} s. Best val_exact {best['val_exact']:.4f} at epoch "
        f"{best['epoch']:g} ({best['wall s']:.0f} s).",
        "",
        format_row(COLUMNS),
        "|" + "---|" * len(COLUMNS),
        *(format_row(row) for row in rows),
        "",
    ]
    return "\n".join(lines)


def schedule_note(args: argparse.Namespace) -> str:
    if args.lr_patience is None:
        return "constant lr"
    return (
        f"lr halved after {args.lr_patience} epochs without a lower val_loss, "
        f"down to {args.lr_min:g}"
    )


def options_note(args: argparse.Namespace) -> str:
    notes = [
        ("text reversed", args.reverse_text),
        ("sum ones digit first", args.reverse_sum),
        ("base fed with every character", args.base_to_encoder),
    ]
    return "".join(f", {note}" for note, on in notes if on)


if __name__ == "__main__":
    raise SystemExit(main())
