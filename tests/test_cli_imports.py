"""`radixpert --help` (every subcommand's parser) imports no torch and no transformers."""

from __future__ import annotations

import subprocess
import sys


def test_building_the_parser_imports_no_model_library() -> None:
    code = (
        "import sys\n"
        "from radixpert.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'transformers', 'accelerate', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
