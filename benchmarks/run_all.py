"""Run every benchmark in order and regenerate the tables of ``benchmarks/README.md``.

Order: Global MP vs ``torch.nn.utils.prune`` (+ reset time), env steps per second, the
1,000-episode soak, the README's main command (``prune-gym compare``), masked fine-tuning on
digits (after the comparison: it fine-tunes the DQN agent's best-found recipes the comparison
recorded), quality on digits (agents vs every allocation rule over seeds), a digits sweep on Ray Tune
(trials two at a time vs one after another; needs the ``[ray]`` extra), the action
parametrisations measured with random episodes, and the cost of a ResNet-50 sweep trial from
measured parts (GPU only in the full run).

One convention: ``--output DIR`` is the folder a script writes into, its files named after the
benchmark (``DIR/quality_digits.json`` ...); without it a script only prints (the quality and
action-mode scripts, whose plots are their result, require it). Every record holds the
machine, the command, the date and the figures. The README's tables are then rebuilt from
those files (between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->``),
so the published tables are always the recorded results.

Usage, from the repository root::

    python benchmarks/run_all.py                  # full (about 1.5-2 h on a 2-core CPU): writes
                                                  # benchmarks/results/ and updates README.md
    python benchmarks/run_all.py --quick          # a few minutes: tiny budgets, 1 seed, into a new
                                                  # temporary folder (or --output DIR), with a
                                                  # SUMMARY.md of the tables; recorded results untouched
    python benchmarks/run_all.py --quick --jobs 2 # the same, two scripts side by side (their
                                                  # timings skewed: quick runs only)
    python benchmarks/run_all.py --only quality   # some of them (names: see --list)
    python benchmarks/run_all.py --update-readme  # only rebuild README.md's tables from benchmarks/results

Every script runs in its own process with ``OMP_NUM_THREADS=1`` (``--omp-threads``): the
recorded CPU figures were taken that way, since two threads per process on a busy 2-core
machine are slower and noisier than one. With a visible GPU the full run also records the
CUDA figures (Global MP on cuda; env steps at 224x224 with and without AMP; the ResNet-50
trial cost).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS = BENCHMARKS_DIR / "results"
README = BENCHMARKS_DIR / "README.md"

Args = list[str]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark script and the argument lists of its full and quick runs (one list per run)."""

    name: str
    script: str
    title: str
    full: Callable[[Path, bool], list[Args]]  # (results folder, GPU visible) -> runs
    quick: Callable[[Path], list[Args]]  # (output folder) -> runs


def _cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _finetune_full(out: Path, cuda: bool) -> list[Args]:
    runs = [["--threads", "1", "--output", str(out)]]
    # The DQN agent's best-found recipes recorded by the comparison (which runs before this
    # step), fine-tuned like Global MP (if present).
    recipes = [out / "compare_digits_recipes" / f"dqn-best-found-{s}.json" for s in ("0.80", "0.90")]
    if all(path.is_file() for path in recipes):
        runs.append([
            "--sparsities", "0.8", "0.9", "--epochs", "5", "--seeds", "0", "1", "2", "--gradual-steps", "0",
            "--methods", "global-mp", *[a for path in recipes for a in ("--recipe", os.path.relpath(path))],
            "--threads", "1", "--output", str(out), "--name", "finetune_digits_agent",
        ])
    return runs


BENCHMARKS: list[Benchmark] = [
    Benchmark(
        "global_mp", "bench_global_mp.py", "Global MP vs torch.nn.utils.prune.global_unstructured, reset time",
        full=lambda out, cuda: [["--threads", "1", "--repeats", "5", "--output", str(out)]],
        quick=lambda out: [["--devices", "cpu", "--threads", "1", "--repeats", "3", "--sparsities", "0.9",
                            "--output", str(out)]],
    ),
    Benchmark(
        "env_steps", "bench_env_steps.py", "Env steps per second vs a straightforward implementation",
        full=lambda out, cuda: [["--episodes", "5", "--output", str(out)]]
        + ([["--device", "cuda", "--resnet50-size", "224", "--amp", "both", "--output", str(out)]] if cuda else []),
        quick=lambda out: [["--quick", "--resnet50-size", "16", "--resnet50-samples", "8", "--output", str(out)]],
    ),
    Benchmark(
        "soak", "soak_digits.py", "Soak: random episodes on the digits env",
        full=lambda out, cuda: [["--episodes", "1000", "--output", str(out)]],
        quick=lambda out: [["--episodes", "10", "--warmup", "3", "--output", str(out)]],
    ),
    Benchmark(
        "compare", "bench_compare_digits.py", "The README's main command: prune-gym compare on digits",
        full=lambda out, cuda: [["--empty-cache", "--output", str(out)]],
        quick=lambda out: [["--sparsity", "0.5", "0.9", "--timesteps", "100", "--output", str(out)]],
    ),
    Benchmark(
        "finetune", "bench_finetune_digits.py", "Masked fine-tuning on digits",
        full=_finetune_full,
        quick=lambda out: [["--sparsities", "0.9", "--epochs", "1", "--seeds", "0", "--gradual-steps", "0",
                            "--methods", "global-mp", "uniform", "--threads", "1",
                            "--output", str(out)]],
    ),
    Benchmark(
        "quality", "bench_quality_digits.py", "Quality on digits: agents vs every allocation rule over seeds",
        full=lambda out, cuda: [["--output", str(out)]],
        quick=lambda out: [["--quick", "--output", str(out)]],
    ),
    Benchmark(
        "sweep", "bench_sweep_digits.py", "A digits sweep on Ray Tune: concurrent vs sequential trials",
        full=lambda out, cuda: [["--output", str(out)]],
        quick=lambda out: [["--algos", "dqn", "--seeds", "0", "--sparsity", "0.9", "--timesteps", "100",
                            "--output", str(out)]],
    ),
    Benchmark(
        "action_modes", "bench_action_modes.py", "Action parametrisations: random episodes",
        full=lambda out, cuda: [["--output", str(out)]],
        quick=lambda out: [["--episodes", "2", "--sparsities", "0.9", "--output", str(out)]],
    ),
    Benchmark(
        "compare_channels", "bench_compare_channels_digits.py",
        "Channel pruning on digits: compare, export, latency side by side",
        full=lambda out, cuda: [["--output", str(out)], ["--channel-multiple", "8", "--output", str(out)],
                                ["--budget", "latency", "--sparsity", "0.2", "0.3", "0.4", "--export-target", "0.3",
                                 "--output", str(out)],
                                ["--channel-multiple", "16", "--finetune-epochs", "10", "--sparsity", "0.3", "0.5",
                                 "--output", str(out)]],
        quick=lambda out: [["--timesteps", "100", "--sparsity", "0.5", "--rounds", "1", "--output", str(out)]],
    ),
    Benchmark(
        "channel_latency", "bench_channel_latency_digits.py",
        "Channel-pruned digits networks: latency in PyTorch and onnxruntime",
        full=lambda out, cuda: [["--recipes", str(out), "--output", str(out)]],
        quick=lambda out: [["--recipes", str(out), "--rounds", "1", "--batches", "1", "--output", str(out)]],
    ),
    Benchmark(
        "channel_conformance", "bench_channel_conformance.py", "Channel env conformance over torchvision's classifiers",
        full=lambda out, cuda: [["--output", str(out)]],
        quick=lambda out: [["--models", "resnet18", "--timeout", "300", "--output", str(out)]],
    ),
    Benchmark(
        "resnet50_cost", "bench_resnet50_cost.py", "ResNet-50 sweep trial cost, from measured parts",
        full=lambda out, cuda: [["--device", "cuda", "--output", str(out)]] if cuda else [],
        quick=lambda out: [["--device", "cpu", "--size", "32", "--samples", "16", "--episodes", "1",
                            "--output", str(out)]],
    ),
]
NAMES = [benchmark.name for benchmark in BENCHMARKS]


# ------------------------------------------------------------------------------------------------
# Tables from recorded results (each returns None when the results are missing)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _machine_text(machine: dict | str | None) -> str:
    if machine is None:
        return "machine not recorded"
    if isinstance(machine, str):
        return machine
    where = machine.get("gpu") or f"{machine.get('cpu', '?')}, {machine.get('logical_cpus', '?')} logical CPUs, " \
                                   f"{machine.get('torch_threads', '?')} torch thread(s)"
    return f"{where}; torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}"


def table_global_mp(results: Path, link: str) -> str | None:
    parts = []
    for device in ("cpu", "cuda"):
        path = results / f"global_mp_{device}.md"
        if path.is_file():
            command = (_read_json(results / f"global_mp_{device}.json") or {}).get("command")
            parts.append(f"**{device.upper()}** ([JSON]({link}global_mp_{device}.json))"
                         + (f", command `{command}`" if command else "") + ":\n\n" + path.read_text().strip())
    return "\n\n".join(parts) or None


def table_env_steps(results: Path, link: str) -> str | None:
    parts = []
    for device in ("cpu", "cuda"):
        record = _read_json(results / f"env_steps_{device}.json")
        if record is None:
            continue
        lines = [
            f"**{device.upper()}**: {_machine_text(record.get('machine'))}; torch {record.get('torch', '?')}; "
            f"{record.get('date', '?')}; median over episodes ([JSON]({link}env_steps_{device}.json)). "
            f"Command: `{record.get('command', '?')}`",
            "",
            "| env | setting | layers | reward samples | PruneEnv steps/s | straightforward steps/s | speed-up "
            "| episode (s) | reset (ms) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in record["results"]:
            setting = ", ".join(f"{k}={v}" for k, v in row["kwargs"].items()) or "defaults (BN re-calibration on)"
            naive = row.get("straightforward_steps_per_s")
            lines.append(
                f"| {row['env']} | {setting} | {row['layers']} | {row['reward_samples']} | {row['steps_per_s']:.1f} | "
                + (f"{naive:.1f} | {row['speedup']:.1f}x" if naive is not None else "- | -")
                + f" | {row['episode_s']:.2f} | {row['reset_ms']:.1f} |"
            )
        parts.append("\n".join(lines))
    if parts and not (results / "env_steps_cuda.json").is_file():
        parts.append("CUDA: not recorded yet (no GPU was lent to this work). On a machine with a GPU, "
                     "`python benchmarks/run_all.py --only env_steps global_mp` records it.")
    return "\n\n".join(parts) or None


def table_soak(results: Path, link: str) -> str | None:
    record = _read_json(results / "soak_digits.json")
    if record is None:
        return None
    return "\n".join([
        f"{_machine_text(record.get('machine'))}; {record.get('date', '?')} "
        f"([JSON]({link}soak_digits.json)). Command: `{record.get('command', '?')}`",
        "",
        "| episodes | steps | seconds | episodes missing the target | Python heap growth (MB) | RSS at start (MB) "
        "| RSS growth (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {record['episodes']:,} | {record['steps']:,} | {record['seconds']:.0f} | {record['episodes_missing_target']} "
        f"| {record['python_heap_growth_mb']:.3f} | {record['rss_start_mb']:.0f} | {record['rss_growth_mb']:.1f} |",
    ])


def _without_title(markdown: str) -> str:
    lines = markdown.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip()


def _relink(markdown: str, link: str) -> str:
    """Make the relative links of a markdown file in the results folder relative to the README."""
    return re.sub(r"\]\((?!https?:|#|/)([^)]+)\)", lambda m: f"]({link}{m.group(1)})", markdown)


def table_finetune(results: Path, link: str) -> str | None:
    parts = []
    for stem, label in (("finetune_digits", "Reference methods"), ("finetune_digits_agent", "The DQN agent's recipes")):
        path = results / f"{stem}.md"
        if path.is_file():
            parts.append(f"**{label}** ([markdown]({link}{stem}.md), [JSON]({link}{stem}.json)):\n\n"
                         + _relink(_without_title(path.read_text()), link))
    return "\n\n".join(parts) or None


def recorded_table(stem: str) -> Callable[[Path, str], str | None]:
    """The table of a benchmark that writes its own markdown: ``<stem>.md`` as it is (title
    dropped, links made the README's) and a link to its record ``<stem>.json``."""

    def table(results: Path, link: str) -> str | None:
        path = results / f"{stem}.md"
        if not path.is_file():
            return None
        return _relink(_without_title(path.read_text()), link) + f"\n\nRecord: [`{stem}.json`]({link}{stem}.json)."

    return table


def table_quality(results: Path, link: str) -> str | None:
    path = results / "quality_digits.md"
    if not path.is_file():
        return None
    images = [
        f"![test accuracy vs sparsity, mean ± std over seeds]({link}quality_digits_accuracy.png)",
        f"![best found reward-split accuracy during training, against Global MP and the search]({link}quality_digits_learning_curve.png)",
    ]
    text = (path.read_text().strip() + f"\n\nFull record: [`quality_digits.json`]({link}quality_digits.json).\n\n"
            + "\n\n".join(images))
    return text


def table_sweep(results: Path, link: str) -> str | None:
    path = results / "sweep_digits.md"
    if not path.is_file():
        return None
    images = [f"![accuracy vs sparsity, mean ± std over seeds]({link}sweep_digits_accuracy_vs_sparsity.png)",
              f"![the agents' learning curves]({link}sweep_digits_learning_curves.png)"]
    return (_without_title(path.read_text()) + f"\n\nRecord: [`sweep_digits.json`]({link}sweep_digits.json).\n\n"
            + "\n\n".join(images))


def table_resnet50_cost(results: Path, link: str) -> str | None:
    parts = [f"**{device.upper()}** ([JSON]({link}resnet50_cost_{device}.json)): "
             + (results / f"resnet50_cost_{device}.md").read_text().strip()
             for device in ("cuda", "cpu") if (results / f"resnet50_cost_{device}.md").is_file()]
    return "\n\n".join(parts) or None


def table_compare_channels(results: Path, link: str) -> str | None:
    parts = []
    for stem, label in (("compare_channels_digits", "The defaults (any channel count)"),
                        ("compare_channels_digits_m8", "channel_multiple=8 (kept channels in multiples of 8)"),
                        ("compare_channels_digits_latency", "budget=\"latency\" (targets: predicted latency removed, "
                                                            "from the per-layer table measured first)"),
                        ("compare_channels_digits_m16_ft10", "channel_multiple=16 and 10 epochs of fine-tuning (every "
                                                             "row's smaller network, and the export)")):
        path = results / f"{stem}.md"
        if path.is_file():
            parts.append(f"**{label}** ([JSON]({link}{stem}.json)):\n\n" + _relink(_without_title(path.read_text()), link))
    return "\n\n".join(parts) or None


def _date_and_machine(name: str, results: Path) -> tuple[str, str] | None:
    """When and where the recorded results of benchmark ``name`` were measured."""
    json_files = {"global_mp": "global_mp_cpu.json", "env_steps": "env_steps_cpu.json", "soak": "soak_digits.json",
                  "compare": "compare_digits.json", "quality": "quality_digits.json",
                  "action_modes": "action_modes_digits.json", "sweep": "sweep_digits.json",
                  "resnet50_cost": "resnet50_cost_cuda.json", "compare_channels": "compare_channels_digits.json",
                  "channel_latency": "channel_latency_digits.json", "channel_conformance": "channel_conformance.json"}
    if name in json_files:
        record = _read_json(results / json_files[name])
        if record is None:
            return None
        machine = record.get("machine")
        text = _machine_text(machine).split(";")[0] if machine else "not recorded in the JSON"
        return str(record.get("date") or record.get("created") or "?")[:10], text
    path = results / "finetune_digits.md"
    if not path.is_file():
        return None
    fields = dict(line[2:].split(": ", 1) for line in path.read_text().splitlines()
                  if line.startswith("- ") and ": " in line)
    return fields.get("Date", "?"), fields.get("Machine", "?").split(";")[0]


def table_index(results: Path, link: str) -> str:
    """One row per benchmark: its section, script, date and machine of the recorded results."""
    lines = ["| benchmark | script | recorded | machine |", "|---|---|---|---|"]
    for benchmark in BENCHMARKS:
        when = _date_and_machine(benchmark.name, results)
        date, machine = when if when is not None else ("not recorded", "-")
        anchor = benchmark.title.lower()
        anchor = re.sub(r"[^a-z0-9 -]", "", anchor).replace(" ", "-")
        lines.append(f"| [{benchmark.title}](#{anchor}) | [`{benchmark.script}`]({benchmark.script}) | {date} | {machine} |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[Path, str], str | None]] = {
    "index": table_index,
    "global_mp": table_global_mp,
    "env_steps": table_env_steps,
    "soak": table_soak,
    "finetune": table_finetune,
    "compare": recorded_table("compare_digits"),
    "quality": table_quality,
    "sweep": table_sweep,
    "action_modes": recorded_table("action_modes_digits"),
    "resnet50_cost": table_resnet50_cost,
    "compare_channels": table_compare_channels,
    "channel_latency": recorded_table("channel_latency_digits"),
    "channel_conformance": recorded_table("channel_conformance"),
}


def _block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED: {re.escape(name)}\b[^>]*-->\n)(.*?)(<!-- END GENERATED: {re.escape(name)} -->)",
        re.DOTALL,
    )


def update_readme(readme: Path = README, results: Path = RESULTS, link: str = "results/") -> list[str]:
    """Rebuild every generated block of ``readme`` from ``results``; return the names updated.

    Blocks whose results are missing are left as they are; a README without a block's markers is
    left alone for that benchmark (and reported)."""
    text = readme.read_text()
    updated = []
    for name, build in TABLES.items():
        pattern = _block_pattern(name)
        if not pattern.search(text):
            print(f"README: no generated block for {name!r} (add <!-- BEGIN GENERATED: {name} --> ... "
                  f"<!-- END GENERATED: {name} -->)", file=sys.stderr)
            continue
        table = build(results, link)
        if table is None:
            continue
        text = pattern.sub(lambda match, table=table: match.group(1) + table.rstrip() + "\n" + match.group(3), text, count=1)
        updated.append(name)
    readme.write_text(text)
    return updated


def write_summary(results: Path, names: list[str]) -> Path:
    """``results/SUMMARY.md``: the tables of ``names`` built from the files in ``results``."""
    sections = ["# Benchmark results", "", "Built by `benchmarks/run_all.py` from the files in this folder.", ""]
    for benchmark in BENCHMARKS:
        if benchmark.name not in names:
            continue
        table = TABLES[benchmark.name](results, "")
        sections += [f"## {benchmark.title}", "", table if table is not None else "(no results written)", ""]
    path = results / "SUMMARY.md"
    path.write_text("\n".join(sections))
    return path


# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a few minutes); never writes benchmarks/results")
    parser.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help=f"run only these ({', '.join(NAMES)})")
    parser.add_argument("--output", type=Path,
                        help="results folder (default: benchmarks/results, or a new temporary folder with --quick)")
    parser.add_argument("--update-readme", action="store_true",
                        help="run nothing: rebuild README.md's tables from benchmarks/results")
    parser.add_argument("--omp-threads", default="1", help="OMP_NUM_THREADS of every script (default 1)")
    parser.add_argument("--list", action="store_true", help="print the benchmarks and their commands, run nothing")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="with --quick: run N scripts side by side (default 1; their timings are then skewed)")
    args = parser.parse_args(argv)
    if args.quick and args.output is not None and args.output.resolve() == RESULTS:
        parser.error("--quick must not write into benchmarks/results (the recorded results): choose another --output")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.jobs > 1 and not args.quick:
        parser.error("--jobs runs scripts side by side, which skews the speed figures they record: only with --quick")
    return args


def plan(args: argparse.Namespace, output: Path) -> list[tuple[Benchmark, Args]]:
    """Every script run (benchmark, arguments) in order."""
    cuda = False if args.quick else _cuda_visible()
    runs = []
    for benchmark in BENCHMARKS:
        if args.only and benchmark.name not in args.only:
            continue
        for arguments in benchmark.quick(output) if args.quick else benchmark.full(output, cuda):
            runs.append((benchmark, arguments))
    return runs


def _command(benchmark: Benchmark, arguments: Args) -> list[str]:
    return [sys.executable, str(BENCHMARKS_DIR / benchmark.script), *arguments]


def _announce(index: int, total: int, benchmark: Benchmark, arguments: Args) -> None:
    print(f"\n[{index}/{total}] {benchmark.name}: python benchmarks/{benchmark.script} {' '.join(arguments)}", flush=True)


def _ended(index: int, total: int, benchmark: Benchmark, arguments: Args, code: int, seconds: float,
           failed: list[str]) -> None:
    """Say how a script ended; a failure joins ``failed``."""
    print(f"[{index}/{total}] {benchmark.name}: exit {code} after {seconds:.0f} s", flush=True)
    if code != 0:
        failed.append(f"{benchmark.name} ({benchmark.script} {' '.join(arguments)}: exit {code})")


def run_scripts(runs: list[tuple[Benchmark, Args]], environment: dict[str, str]) -> list[str]:
    """Each script in turn, its output as it comes; the failures."""
    failed: list[str] = []
    for index, (benchmark, arguments) in enumerate(runs, 1):
        _announce(index, len(runs), benchmark, arguments)
        tic = time.perf_counter()
        code = subprocess.call(_command(benchmark, arguments), env=environment)
        _ended(index, len(runs), benchmark, arguments, code, time.perf_counter() - tic, failed)
    return failed


def run_side_by_side(runs: list[tuple[Benchmark, Args]], environment: dict[str, str], jobs: int) -> list[str]:
    """``jobs`` scripts at a time, in the plan's order, each one's output printed whole (never
    interleaved); the failures."""
    def run(benchmark: Benchmark, arguments: Args) -> tuple[float, subprocess.CompletedProcess]:
        tic = time.perf_counter()
        done = subprocess.run(_command(benchmark, arguments), env=environment, capture_output=True, text=True)
        return time.perf_counter() - tic, done

    failed: list[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run, benchmark, arguments) for benchmark, arguments in runs]
        for index, ((benchmark, arguments), future) in enumerate(zip(runs, futures, strict=True), 1):
            seconds, done = future.result()
            _announce(index, len(runs), benchmark, arguments)
            print(done.stdout + done.stderr, end="")
            _ended(index, len(runs), benchmark, arguments, done.returncode, seconds, failed)
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.update_readme:
        print(f"updated {README}: {', '.join(update_readme()) or 'nothing'}")
        return 0
    if args.output is not None:
        output = args.output
    elif args.quick:
        output = Path("TMPDIR") if args.list else Path(tempfile.mkdtemp(prefix="prune-gym-benchmarks-"))
    else:
        output = RESULTS
    if not args.list:
        output.mkdir(parents=True, exist_ok=True)
    # Relative where possible: the scripts record their command lines in the results.
    if output.resolve().is_relative_to(Path.cwd()):
        output = Path(os.path.relpath(output.resolve()))
    runs = plan(args, output)
    if args.list:
        for benchmark, arguments in runs:
            print(f"{benchmark.name}: python benchmarks/{benchmark.script} {' '.join(arguments)}")
        return 0

    environment = {**os.environ, "OMP_NUM_THREADS": str(args.omp_threads)}
    started = time.perf_counter()
    failed = run_scripts(runs, environment) if args.jobs == 1 else run_side_by_side(runs, environment, args.jobs)

    names = list(dict.fromkeys(benchmark.name for benchmark, _ in runs))
    if output.resolve() == RESULTS:
        print(f"\nupdated {README}: {', '.join(update_readme()) or 'nothing'} "
              f"(the hand-written readings around the tables may need a look)")
    else:
        print(f"\nwrote {write_summary(output, names)}")
    print(f"results in {output}; {time.perf_counter() - started:.0f} s in all")
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
