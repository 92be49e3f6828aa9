"""``harness convert llava-original SRC``: an original-layout LLaVA checkpoint to the HF layout."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    cv = subparsers.add_parser(
        "convert", help="LLaVA original-layout checkpoint (ViCA, YOPO, SAISA) -> HF layout"
    )
    cv.add_argument("layout", choices=["llava-original"])
    cv.add_argument("src", help="original checkpoint directory")
    cv.add_argument(
        "--vision-tower", required=True, help="local CLIP vision tower directory (mm_vision_tower)"
    )
    cv.add_argument("--out", required=True)
    cv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.models.convert import convert_llava_original

    meta = convert_llava_original(args.src, args.vision_tower, args.out)  # ConvertError: one line
    print(
        f"converted {args.src} -> {args.out} ({meta.get('architecture', 'llava')}); check it with: harness verify {args.out}"
    )
    return 0
