"""``harness merge FOLDERS --out DIR``: combine record folders (e.g. shards) into one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import HarnessError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    mg = subparsers.add_parser("merge", help="combine record folders (e.g. shards) into one")
    mg.add_argument("folders", nargs="+")
    mg.add_argument("--out", required=True)
    mg.add_argument("--allow-conflicts", action="store_true")
    mg.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import records

    out = Path(args.out)
    seen: dict[str, str] = {}
    copied = 0
    for folder in args.folders:
        recs = records.load_dir(Path(folder))
        if not recs:
            raise HarnessError(f"no records under '{folder}'")
        for r in recs:
            if r.status != "ok":
                continue
            text = r.model_dump_json(indent=2)
            if r.fingerprint in seen:
                if json.loads(seen[r.fingerprint])["metrics"] != r.metrics and not args.allow_conflicts:
                    raise HarnessError(
                        f"cell {r.backbone} | {r.method} | {r.task} | {r.scenario} has two different results "
                        f"(fingerprint {r.fingerprint[:12]}); pass --allow-conflicts to keep the first"
                    )
                continue
            seen[r.fingerprint] = text
            records.save(r, out)
            copied += 1
    print(f"merged {copied} records from {len(args.folders)} folders into {out}")
    return 0
