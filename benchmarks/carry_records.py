"""Carry a long comparison between sessions in its runs' records (issue 13): weights stay behind, figures travel.

``edgeprune compare`` leaves ``record.json`` in every finished run's folder and ``--resume`` reads a run back
from it alone. ``runs/`` is not kept from one machine to the next; the study's results folder in ``docs/`` is
(committed). So:

    # before the machine goes: every finished run's record into docs/results/<study>/records/
    .venv/bin/python benchmarks/carry_records.py save runs/conv_vgg16_w025 docs/results/convergence_vgg16_w025
    # on the next machine: the records back into runs/, then the study's command with --resume
    .venv/bin/python benchmarks/carry_records.py restore docs/results/convergence_vgg16_w025 runs/conv_vgg16_w025 \\
        --data ../shared/data/cifar10.tar.gz

``restore`` also turns the runs of the results folder's ``compare.json`` that have no record there (a study
finished before runs left records) into records, keyed by ``--data``: give the data set the study ran on.
A run folder that already has a record keeps it.

Records written before run keys held the data set's content hash are refused by ``compare --resume`` (nothing
in them shows which images they ran on). ``restore --data PATH --stamp-data`` vouches that they ran on PATH:
each restored record whose data name, sizes, classes and shape equal PATH's gets PATH's content hash in its
key; a record of other data is left as it is (and ``compare`` will say so). Only the copies in ``runs/`` change.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from pathlib import Path

from common import parser

from edgeprune.data import load_dataset
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_json
from edgeprune.pipelines import records_from_summary
from edgeprune.records import RECORD


def save(runs: Path, results: Path, only: list[str] | None = None) -> list[str]:
    """Copy every ``runs/<tag>/record.json`` (only the tags matching one of the globs ``only``, if given) to
    ``results/records/<tag>.json``; returns the tags."""
    folder = results / "records"
    folder.mkdir(parents=True, exist_ok=True)
    tags = sorted(p.parent.name for p in runs.glob(f"*/{RECORD}"))
    tags = [t for t in tags if only is None or any(fnmatch.fnmatchcase(t, g) for g in only)]
    for tag in tags:
        tmp = folder / f".{tag}.json.tmp"
        shutil.copyfile(runs / tag / RECORD, tmp)
        tmp.replace(folder / f"{tag}.json")  # atomic: a stopped copy leaves no half record
    return tags


def stamp(record: dict, data: object) -> bool:
    """Put ``data``'s content hash into a record's key when its data fields are ``data``'s; True if it did."""
    key = record.get("key") if isinstance(record, dict) else None
    fields = key.get("data") if isinstance(key, dict) else None
    if not isinstance(fields, dict) or "content_hash" in fields:
        return False
    ours = {"name": data.name, "train": len(data.train_y), "test": len(data.test_y), "classes": list(data.classes),
            "shape": list(data.input_shape())}  # fmt: skip
    if {k: fields.get(k) for k in ours} != ours:
        return False
    fields["content_hash"] = data.content_hash
    return True


def restore(results: Path, runs: Path, data_path: str | None, stamp_data: bool = False) -> list[str]:
    """Put the saved records back into ``runs`` (and records made from ``compare.json``'s runs); returns the tags."""
    summary = results / "compare.json"
    if not (results / "records").is_dir() and not summary.is_file():
        raise EdgepruneError(f"{results}: no records/ and no compare.json to restore from")
    if stamp_data and not data_path:
        raise EdgepruneError("--stamp-data needs --data PATH: the data set the records ran on")
    data = load_dataset(data_path) if data_path else None
    tags = []
    for saved in sorted((results / "records").glob("*.json")):
        target = runs / saved.stem / RECORD
        if not target.exists():
            record = json.loads(saved.read_text())
            if stamp_data and stamp(record, data):
                print(f"{saved.stem}: stamped with {data_path}'s content hash")
            write_json(target, record)
            tags.append(saved.stem)
    if summary.is_file() and data is not None:
        tags += records_from_summary(json.loads(summary.read_text()), data, runs)
    return tags


def main() -> None:
    """Save or restore one study's records."""
    p = parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="runs/<study> -> docs/results/<study>/records/")
    s.add_argument("runs")
    s.add_argument("results")
    s.add_argument("--only", nargs="+", metavar="GLOB",
                   help="save only the runs whose tag matches (say '*+kd-*': a study's added runs, leaving the "
                        "records of runs it retrained, such as a teacher, as they were)")  # fmt: skip
    r = sub.add_parser("restore", help="docs/results/<study>/records/ (and its compare.json) -> runs/<study>")
    r.add_argument("results")
    r.add_argument("runs")
    r.add_argument("--data", help="the data set the study ran on (to key records made from compare.json)")
    r.add_argument("--stamp-data", action="store_true",
                   help="vouch that hash-less records ran on --data: add its hash to their keys")  # fmt: skip
    args = p.parse_args()
    try:
        if args.command == "save":
            tags = save(Path(args.runs), Path(args.results), args.only)
        else:
            tags = restore(Path(args.results), Path(args.runs), args.data, args.stamp_data)
    except (EdgepruneError, OSError, ValueError) as e:
        sys.exit(f"carry_records: {e}")
    print(f"{args.command}: {len(tags)} run record(s){': ' + ', '.join(tags) if tags else ''}")


if __name__ == "__main__":
    main()
