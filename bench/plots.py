"""PNG plots of a ``run_all.py`` record: medians with min-max bars, ours beside the peer.

matplotlib is the optional ``bench`` extra (``pip install -e '.[bench]'``);
nothing else in the project needs it, so it is imported only when drawing.

    .venv/bin/python bench/plots.py bench/results/all-20261130-090000.json   # redraw into bench/plots/
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
PLOTS = BENCH / "plots"
_STYLE = {"ours": {"color": "tab:blue", "marker": "o"}, "peer": {"color": "tab:orange", "marker": "s", "ls": "--"}}
_LABEL = {"ours": "ours (avap-server)", "peer": "peer (Node.js reference)"}

Record = dict[str, Any]


def is_h2load_rps(name: str) -> bool:
    return name.startswith("B ") and name.endswith(": GetCommand")


def is_sync_rate(name: str) -> bool:
    return name == "sync: catalog after decompress+parse"


def values(run: Record, label: str, match: Callable[[str], bool]) -> list[float]:
    """The per-round values of ``label`` in ``run``'s first metric whose name ``match``es."""
    for name, metric in run["metrics"].items():
        if match(name):
            return [float(v) for v in metric["values"].get(label, [])]
    return []


def draw(record: Record, out: Path = PLOTS) -> list[Path]:
    """Draw every plot the record has data for into ``out``; return the files written.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    title = f"{record['date']}, {record['machine']['cpu']}, {record['machine']['cores']} cores (shared)"
    written = []
    for name, draw_one in (
        ("rps_vs_processes", _rps_vs_processes),
        ("rps_vs_catalog_size", _rps_vs_size),
        ("sync_vs_catalog_size", _sync_vs_size),
        ("memory_vs_processes", _memory_vs_processes),
        ("replica_vs_rpc", _replica),
    ):
        figure, axes = plt.subplots(figsize=(7, 4.2))
        if draw_one(record, axes):
            figure.suptitle(title, fontsize=8)
            figure.tight_layout()
            path = out / f"{name}.png"
            figure.savefig(path, dpi=100)
            written.append(path)
        plt.close(figure)
    return written


def _runs(record: Record, phase: str) -> list[Record]:
    return [run for run in record["runs"] if run["phase"] == phase]


def _line(
    axes: Any, xs: Sequence[float], rounds: Sequence[list[float]], label: str, text: str, style: Any = None
) -> None:
    """Medians joined by a line, with a bar from min to max at each x; x without values is left out."""
    points = [(x, r) for x, r in zip(xs, rounds, strict=True) if r]
    if not points:
        return
    med = [statistics.median(r) for _, r in points]
    low = [m - min(r) for m, (_, r) in zip(med, points, strict=True)]
    high = [max(r) - m for m, (_, r) in zip(med, points, strict=True)]
    axes.errorbar([x for x, _ in points], med, yerr=[low, high], capsize=3, label=text, **(style or _STYLE[label]))


def _sweep(record: Record, axes: Any, phase: str, x_key: str, match: Callable[[str], bool]) -> bool:
    runs = sorted(_runs(record, phase), key=lambda run: run["params"][x_key])
    if not runs:
        return False
    xs = [run["params"][x_key] for run in runs]
    for label in record["targets"]:
        _line(axes, xs, [values(run, label, match) for run in runs], label, _LABEL[label])
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return True


def _rps_vs_processes(record: Record, axes: Any) -> bool:
    if not _sweep(record, axes, "processes", "processes", is_h2load_rps):
        return False
    commands = _runs(record, "processes")[0]["params"]["commands"]
    axes.set(xlabel="avap-server --processes (the peer is always one process)", ylabel="GetCommand req/s (h2load)",
             title=f"Server capacity against processes, {commands:,} commands")  # fmt: skip
    axes.set_xticks(sorted(run["params"]["processes"] for run in _runs(record, "processes")))
    axes.set_ylim(bottom=0)
    return True


def _rps_vs_size(record: Record, axes: Any) -> bool:
    if not _sweep(record, axes, "sizes", "commands", is_h2load_rps):
        return False
    axes.set(xscale="log", xlabel="catalog size (commands)", ylabel="GetCommand req/s (h2load)",
             title="Server capacity against catalog size")  # fmt: skip
    axes.set_ylim(bottom=0)
    return True


def _sync_vs_size(record: Record, axes: Any) -> bool:
    if not _sweep(record, axes, "sizes", "commands", is_sync_rate):
        return False
    axes.set(xscale="log", xlabel="catalog size (commands)", ylabel="catalog MB/s after decompress + parse",
             title="SyncCatalog, one client, full syncs")  # fmt: skip
    axes.set_ylim(bottom=0)
    return True


def _memory_vs_processes(record: Record, axes: Any) -> bool:
    runs = sorted(_runs(record, "processes"), key=lambda run: run["params"]["processes"])
    if not runs:
        return False
    xs = [run["params"]["processes"] for run in runs]
    for label in record["targets"]:
        for kind in ("RSS", "PSS"):
            row = f"memory after start: {kind}"
            style = dict(_STYLE[label], **({"markerfacecolor": "none"} if kind == "RSS" else {}))
            _line(axes, xs, [values(run, label, row.__eq__) for run in runs], label, f"{_LABEL[label]}: {kind}", style)
    commands = runs[0]["params"]["commands"]
    axes.set(xlabel="avap-server --processes (the peer is always one process)", ylabel="MB, all processes",
             title=f"Memory after start, {commands:,} commands (RSS hollow, PSS filled)")  # fmt: skip
    axes.set_xticks(xs)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    return True


def _replica(record: Record, axes: Any) -> bool:
    replica = _runs(record, "replica")
    if not replica:
        return False
    rates = replica[0]["rates"]
    bars = [("Replica.get\n(in process)", rates.get("replica", []), "ours")]
    bars.append(("ours GetCommand\ngRPC, 1 thread", rates.get("grpc_ours", []), "ours"))
    bars.append(("peer GetCommand\ngRPC, 1 thread", rates.get("grpc_peer", []), "peer"))
    for run in _runs(record, "serve"):
        for label in record["targets"]:
            bars.append((f"{label} GetCommand\nh2load, server max", values(run, label, is_h2load_rps), label))
    bars = [bar for bar in bars if bar[1]]
    med = [statistics.median(bar[1]) for bar in bars]
    axes.bar(range(len(bars)), med, color=[_STYLE[bar[2]]["color"] for bar in bars], log=True)
    for index, value in enumerate(med):
        axes.text(index, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(len(bars)), [bar[0] for bar in bars], fontsize=7)
    commands = replica[0]["params"]["commands"]
    axes.set(
        ylabel="lookups per second (log)", title=f"In-process replica against the RPC paths, {commands:,} commands"
    )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("record", type=Path, help="a run_all.py JSON record")
    parser.add_argument("--out", type=Path, default=PLOTS, help="folder for the PNG files (default bench/plots)")
    args = parser.parse_args(argv)
    try:
        record = json.loads(args.record.read_text())
        written = draw(record, args.out)
    except ImportError:
        print("error: matplotlib is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot draw {args.record}: {exc!r}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
