"""The README's Python code runs as written, in the order a reader meets it."""

import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

#: The block that the README presents as a file to save, not as a script to run.
FILE_BLOCK = ("A complete file, `my_vae.py`:", "my_vae.py")


def python_blocks(text: str) -> list[tuple[str, str]]:
    """Each ```python block with the paragraph line just above it, in order."""
    blocks = []
    parts = text.split("```python\n")
    for before, part in zip(parts, parts[1:], strict=False):
        lead = [line for line in before.strip().splitlines() if line.strip()]
        blocks.append((lead[-1] if lead else "", part.split("```", 1)[0]))
    return blocks


def test_the_readme_has_the_blocks_this_test_runs():
    leads = [lead for lead, _ in python_blocks(README.read_text())]
    assert FILE_BLOCK[0] in leads
    assert any("From a script or a notebook" in lead or "own `SVI`" in lead for lead in leads)
    assert len(leads) >= 3


def test_every_python_block_of_the_readme_runs(run_cli, tmp_path):
    """The file block is saved as ``my_vae.py``; the CLI example beside it fills
    ``runs/mine`` first, as a reader following the README would; then every other block runs
    as a script in the same folder, each in a fresh interpreter."""
    scripts = []
    for lead, code in python_blocks(README.read_text()):
        if lead == FILE_BLOCK[0]:
            (tmp_path / FILE_BLOCK[1]).write_text(code)
        else:
            scripts.append(code)
    run_cli("train", "--pair", "my_vae.py:MyVAE", "--pair-kwargs", '{"z_dim": 8}', "--epochs",
            "1", "--train-limit", "200", "--out", "runs/mine", cwd=tmp_path)  # fmt: skip
    for index, code in enumerate(scripts):
        path = tmp_path / f"readme_block_{index}.py"
        path.write_text(code)
        result = subprocess.run([sys.executable, path.name], cwd=tmp_path, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, f"README block {index}:\n{code}\n{result.stderr[-3000:]}"
