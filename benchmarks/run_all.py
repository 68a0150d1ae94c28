"""Every benchmark of the project in one run, summarised in one table (Markdown and JSON).

Each benchmark script runs in its own process and writes its figures as JSON; this driver turns
them into rows of one table: figure, this project, peer, ratio, target, met. The peer is what the
issue compares against (the original zoobot 2.9.0, PIL, or the other framework), measured in the
same run; absolute speeds on shared machines vary up to 2x between runs, so targets are ratios
wherever there is a peer.

Run: python benchmarks/run_all.py --out bench-output [--peer-python PATH] [--only NAME,...]
     [--table-only]
     (`nox -s bench` runs it with the parity environment and the `bench-peer` one)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from zoobot.shared.io import atomic_write_text

HERE = Path(__file__).parent


@dataclass
class Row:
    """One figure of the table; `ratio` is ours / peer where there is a peer."""

    benchmark: str
    figure: str
    unit: str
    ours: float | None
    peer: float | None = None
    peer_is: str = ""
    target: float | None = None
    target_is: str = ""
    target_on: str = "ratio"
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.peer:
            return None
        return self.ours / self.peer

    def judge(self) -> Row:
        """Fill `met` from the target, comparing the ratio or the absolute figure."""
        value = self.ratio if self.target_on == "ratio" else self.ours
        if self.target is not None and value is not None:
            self.met = value >= self.target if self.target_is == ">=" else value <= self.target
        return self


def _loss(result: dict) -> list[Row]:
    return [
        Row(
            "loss",
            f"NumPy loss + gradient, {result['schema']}, batch {result['batch_size']}",
            "images/s",
            result["loss_and_grad_images_per_second"],
        )
    ]


def _decode(result: dict) -> list[Row]:
    rates = result["images_per_s"]
    return [
        Row(
            "decode",
            f"read_image, {result['source_px']} px JPEG to {result['size']} px, one core",
            "images/s",
            rates["read_image"],
            rates["pil_bicubic_default"],
            "PIL open + convert + resize",
            2.0,
            ">=",
        )
    ]


def _shards(result: dict) -> list[Row]:
    return [
        Row(
            "shards",
            f"write_shards, {result['image_size']} px JPEGs, {result['workers']} workers",
            "galaxies/s",
            result["galaxies_per_second"],
            target=2000,
            target_is=">=",
            target_on="value",
        )
    ]


def _synthetic(result: dict) -> list[Row]:
    return [
        Row(
            "synthetic",
            f"make_survey, {result['galaxies']:,} galaxies at {result['image_size']} px",
            "s",
            result["seconds"],
            target=60.0,
            target_is="<=",
            target_on="value",
        )
    ]


def _figures(benchmark: str, peer_is: str) -> Callable[[dict], list[Row]]:
    """Rows of a script that reports `figures` with ours/baseline medians, ratio and target."""

    def rows(result: dict) -> list[Row]:
        out = []
        for figure in result["figures"].values():
            target_on = figure.get("target_on", "ratio")
            out.append(
                Row(
                    benchmark,
                    figure["title"],
                    figure["unit"],
                    figure.get("ours_median"),
                    figure.get("baseline_median"),
                    figure.get("baseline_is", peer_is),
                    figure.get("target"),
                    figure.get("target_is", ""),
                    target_on,
                )
            )
        return out

    return rows


@dataclass
class Benchmark:
    """A script, the options it gets, whether it needs the peer, and how to read its JSON."""

    name: str
    script: str
    rows: Callable[[dict], list[Row]]
    args: tuple[str, ...] = ()
    needs_peer: bool = False


BENCHMARKS = (
    Benchmark("loss", "loss.py", _loss),
    Benchmark("decode", "decode.py", _decode),
    Benchmark("shards", "shards.py", _shards),
    Benchmark("synthetic", "synthetic.py", _synthetic),
    Benchmark("tf_data", "tf_data.py", _figures("tf_data", "files")),
    Benchmark("tf_vs_torch", "tf_vs_torch.py", _figures("tf_vs_torch", "zoobot.torch")),
    Benchmark("predict_memory", "predict_memory.py", _figures("predict_memory", "fewer rows")),
    Benchmark(
        "torch_vs_original",
        "torch_vs_original.py",
        _figures("torch_vs_original", "zoobot 2.9.0"),
        needs_peer=True,
    ),
)


def machine() -> dict:
    """Where the figures were measured: CPU model, cores, Python, load."""
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    # below 10^digits - 0.5, `g` keeps `digits` significant digits without an exponent
    return f"{value:,.{digits}g}" if abs(value) < 10**digits - 0.5 else f"{value:,.0f}"


def markdown(rows: list[Row], where: dict) -> str:
    """The table as Markdown, with the machine it was measured on."""
    lines = [
        f"Measured {where['date']} on {where['cpu']}, {where['cores']} cores, Python "
        f"{where['python']} (load average {where['load_average']:.1f} at the end).",
        "",
        "| figure | unit | this project | peer | peer is | ratio | target | met |",
        "|---|---|---:|---:|---|---:|---|:---:|",
    ]
    for row in rows:
        target = ""
        if row.target is not None:
            target = f"{row.target_is} {_number(row.target)}" + (
                "x" if row.target_on == "ratio" else f" {row.unit}"
            )
        met = {True: "yes", False: "**no**", None: ""}[row.met]
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        lines.append(
            f"| {row.figure} | {row.unit} | {_number(row.ours)} | {_number(row.peer)} | "
            f"{row.peer_is} | {ratio} | {target} | {met} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the selected benchmarks, then write bench-table.md and bench-table.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    parser.add_argument("--peer-python", default=os.environ.get("ZOOBOT_PEER_PYTHON"))
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild the table from the JSON files already in --out, running nothing",
    )
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    failed = []
    for bench in chosen:
        command = [sys.executable, str(HERE / bench.script), *bench.args]
        if bench.needs_peer and not args.table_only:
            if not args.peer_python:
                failed.append(f"{bench.name}: needs --peer-python (or nox -s bench)")
                continue
            command += ["--peer-python", args.peer_python]
        output = args.out / f"{bench.name}.json"
        if args.table_only:
            if output.exists():
                rows += [row.judge() for row in bench.rows(json.loads(output.read_text()))]
            continue
        print(f"== {bench.name}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run([*command, "--json", str(output)], check=False)
        print(f"== {bench.name}: {time.perf_counter() - start:.0f} s", flush=True)
        if done.returncode != 0 or not output.exists():
            failed.append(f"{bench.name}: exit status {done.returncode}")
            continue
        rows += [row.judge() for row in bench.rows(json.loads(output.read_text()))]
    where = machine()
    if args.table_only:  # the machine is where the JSON came from; the date and load are not
        where["date"] += " (table rebuilt; figures measured earlier)"
    atomic_write_text(args.out / "bench-table.md", markdown(rows, where))
    table = {"machine": where, "rows": [asdict(r) | {"ratio": r.ratio} for r in rows]}
    atomic_write_text(args.out / "bench-table.json", json.dumps(table, indent=2) + "\n")
    print(markdown(rows, where))
    print(f"wrote {args.out / 'bench-table.md'} and {args.out / 'bench-table.json'}")
    if failed:
        sys.exit("benchmarks that did not finish:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
