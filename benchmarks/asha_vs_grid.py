"""The reference grid trained in full, then under ASHA: best val_exact, epochs, wall time.

    python3 benchmarks/asha_vs_grid.py                 # the 216 combinations, reduced widths
    python3 benchmarks/asha_vs_grid.py --widths 64 128 256 --rows 5000   # the reference sizes
    python3 benchmarks/asha_vs_grid.py --widths 16 64  # a subset: 64 combinations

Both sweeps are the combinations of search_spaces/multibase_addition_reference.yaml (learning
rate x three layer widths x epochs x batch size: 216); by default with fewer rows and narrower
layers so that both finish in well under an hour on two cores; two widths per layer make it 64.
The ASHA sweep is the same file with search_spaces/multibase_addition_reference_asha.yaml's
schedule. Prints a table and writes it
into benchmarks/RESULTS.md, replacing this benchmark's earlier section.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml
from results_file import replace_section  # beside this script

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "search_spaces" / "multibase_addition_reference.yaml"
ASHA = ROOT / "search_spaces" / "multibase_addition_reference_asha.yaml"
HEADING = "## ASHA against the full reference grid"
WIDTHS = ("layer_1_text_input_neuron", "layer_1_base_input_neuron", "concatenated_layer_neuron")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1200, help="rows of data (reference: 5000)")
    parser.add_argument(
        "--widths",
        type=int,
        nargs="+",
        default=(16, 32, 64),
        help="the widths tried for each of the three layers (reference: 64 128 256)",
    )
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    args = parser.parse_args()

    from orchestrator import load_sweep, run_sweep
    from orchestrator.tracking import leaderboard

    rows = []
    with tempfile.TemporaryDirectory(prefix="asha-bench-") as folder:
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        os.environ.setdefault("ORCHESTRATOR_HOME", str(Path(folder) / "home"))
        for label, source in (("full grid", REFERENCE), ("ASHA", ASHA)):
            spec = yaml.safe_load(source.read_text())
            spec["name"] = f"bench-{label.replace(' ', '-').lower()}"
            spec["data"]["options"]["n_samples"] = args.rows
            for name in WIDTHS:
                spec["params"][name] = list(args.widths)
            path = Path(folder) / f"{spec['name']}.yaml"
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            started = time.perf_counter()
            result = run_sweep(load_sweep(path), tracking_uri=uri, fresh=True)
            wall = time.perf_counter() - started
            table = leaderboard(uri, spec["name"])
            rows.append(
                {
                    "sweep": label,
                    "trials": len(table),
                    "stopped": int((table["status"] == "stopped").sum()),
                    "best val_exact": float(table["val_exact"].max()),
                    "best val_acc": float(table["val_acc"].max()),
                    "epochs": int(table["epochs_trained"].sum()),
                    "wall s": wall,
                }
            )
            print(f"{label}: {result.count('finished')} finished in {wall:.0f} s", file=sys.stderr)

    full, asha = rows
    lines = [
        "| sweep | trials | stopped early | best val_exact | best val_acc | epochs trained "
        "| wall time |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['sweep']} | {r['trials']} | {r['stopped']} | {r['best val_exact']:.3f} "
            f"| {r['best val_acc']:.3f} | {r['epochs']} | {r['wall s']:.0f} s |"
            for r in rows
        ),
    ]
    gap = full["best val_exact"] - asha["best val_exact"]
    share = asha["epochs"] / full["epochs"]
    side = "below" if gap >= 0 else "above"
    verdict = (
        f"ASHA's best val_exact is {abs(gap):.3f} {side} the full grid's (target: within "
        f"0.02 below) with {share:.0%} of its epochs (target: at most a third)."
    )
    print("\n".join(lines))
    print(verdict)
    if args.write:
        section = "\n".join(
            [
                HEADING,
                "",
                f"`python3 benchmarks/asha_vs_grid.py --rows {args.rows} --widths "
                f"{' '.join(map(str, args.widths))} --write`, on {os.cpu_count()} CPU cores "
                f"({platform.processor() or platform.machine()}), "
                f"{time.strftime('%Y-%m-%d')}. {full['trials']} combinations of the reference "
                f"grid (lr 2 x widths {list(args.widths)} for each of 3 layers x epochs 3, 5 x "
                f"batch 16, 32), {args.rows} rows.",
                "",
                *lines,
                "",
                verdict,
                "",
            ]
        )
        replace_section(HEADING, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
