"""`dv-features DATASET [DATASET ...] --config NAME`: compute the teacher targets and the training-resolution image
cache next to each dataset (`DATASET/dv_features/<spec>/`), which `dv-train` opens with `FeatureCache.open`."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from policy_server.model.config import PRESETS, preset
from policy_server.training.features import FeatureBuildError, build, load_for
from policy_server.training.features_cache import CACHE_DIR, FeatureCacheError, FeatureSpec, feature_spec
from policy_server.training.features_source import DatasetReadError, read_dataset
from policy_server.training.flow import MissingTeacherError
from teleop.dataset import layout as L

console = Console(stderr=True)
FAILURES = (FeatureBuildError, FeatureCacheError, DatasetReadError, MissingTeacherError, OSError)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dv-features", description=__doc__)
    p.add_argument("datasets", nargs="+", type=Path, metavar="DATASET", help="dv-teleop dataset folders")
    p.add_argument("--config", required=True, choices=sorted(PRESETS), help="the model config the targets are for")
    p.add_argument("--flow", choices=["dis", "cotracker"], default="dis",
                   help="tracker for the dynamic-region mask (cotracker needs its weights on disk)")
    p.add_argument("--gap", type=int, default=None,
                   help="frames between a frame and the one its motion is measured to (default: the config's "
                        "future_steps, the frame the dynamic-region head predicts)")
    p.add_argument("--resume", action="store_true",
                   help="keep the episodes an interrupted or earlier run finished, if their files are unchanged")
    args = p.parse_args(argv)
    if args.gap is not None and args.gap < 1:
        p.error("--gap must be at least 1")
    return args


def _recording_warning(dataset: Path) -> None:
    staging = dataset / L.STAGING
    if staging.is_dir() and any(staging.iterdir()):
        console.print(f"[yellow]warning:[/yellow] {dataset} has an episode in {L.STAGING} (being recorded, or "
                      "interrupted): a cache built now is stale once more episodes are committed")


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run(datasets: list[Path], spec: FeatureSpec, resume: bool) -> Table:
    """Build every dataset's cache with one progress bar per dataset; the summary table of what was done."""
    teachers = load_for(spec)  # before any work: a missing teacher fails now, not after an hour
    table = Table("dataset", "episodes", "computed", "kept", "frames", "size",
                  title=f"dv-features: DATASET/{CACHE_DIR}/{spec.dirname}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
               TextColumn("{task.fields[episodes]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        for dataset in datasets:
            _recording_warning(dataset)
            source = read_dataset(dataset)
            counts: Counter[str] = Counter()
            bar = progress.add_task(dataset.name, total=source.total_frames, episodes="")

            def advance(frames: int, what: str, bar: int = bar, counts: Counter[str] = counts,
                        n: int = len(source.episodes)) -> None:
                counts[what] += 1
                done = sum(v for k, v in counts.items() if k in ("computed", "resumed", "reused"))
                progress.update(bar, advance=frames, episodes=f"episode {done}/{n}" if done else what)

            folder = build(dataset, spec, resume=resume, progress=advance, teachers=teachers)
            kept = counts["resumed"] + counts["reused"]
            status = "up to date" if counts["up to date"] else str(counts["computed"])
            table.add_row(str(dataset), str(len(source.episodes)), status, str(kept), str(source.total_frames),
                          f"{_folder_size(folder) / 1e6:.1f} MB")
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = feature_spec(preset(args.config), args.flow, args.gap)
        table = run(args.datasets, spec, args.resume)
    except FAILURES as exc:
        console.print(f"[red]dv-features:[/red] {exc}")
        return 2
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
