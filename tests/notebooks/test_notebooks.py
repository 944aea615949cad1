"""Execute the notebooks in notebooks/ from a fresh kernel, as a user (or papermill) would.

Each notebook runs top to bottom with nbclient in a new "python3" kernel started from this
interpreter (jupyter_client runs a kernelspec whose argv[0] is "python" with sys.executable,
so the kernel is the test's own venv; the first injected cell asserts that). Parameters are
injected papermill-style: a cell tagged "injected-parameters" right after the cell tagged
"parameters". The kernel's working folder is notebooks/, as when a user opens the notebook
there; the notebooks put the checkout on sys.path themselves. Nothing is downloaded: the
kernel runs with HF_HUB_OFFLINE=1 and the notebooks' offline paths (tiny model, bundled data).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ipykernel  # noqa: F401  (the kernel the notebooks run in)
import matplotlib  # noqa: F401
import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# Per cell; the end-to-end training cells compile the train steps (tens of seconds on 2 CPU cores).
CELL_TIMEOUT_S = 600


def inject_parameters(nb, values: dict) -> None:
    """Insert a cell assigning `values` right after the "parameters" cell (papermill's layout),
    led by a check that the kernel runs this interpreter's environment."""
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    lines = [
        "# Injected by tests/notebooks/test_notebooks.py",
        "import sys as _sys",
        f"assert _sys.prefix == {sys.prefix!r}, f'kernel runs {{_sys.executable}}, not the test venv'",
        *(f"{name} = {value!r}" for name, value in values.items()),
    ]
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    nb.cells.insert(index + 1, cell)


def run_notebook(name: str, values: dict, monkeypatch) -> nbformat.NotebookNode:
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    inject_parameters(nb, values)
    # The kernel inherits this environment: no hub access, no GPU preallocation surprises.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) on the first failing cell
    return nb


def text_output(nb) -> str:
    """stdout / stderr and text/plain results of every cell, joined."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif out.get("output_type") in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def assert_no_errors(nb) -> None:
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, [f"{e.get('ename')}: {e.get('evalue')}" for e in errors]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "end_to_end.ipynb"])
def test_notebook_is_clean_and_parameterised(name):
    """Committed without outputs, one "parameters" cell as the first code cell, a Colab badge,
    and the Colab install guarded by the google.colab check."""
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert [i for i, cell in enumerate(code) if "parameters" in cell.metadata.get("tags", [])] == [0]
    assert "colab.research.google.com/github/" in nb.cells[0].source and name in nb.cells[0].source
    setup = code[1].source
    assert '"google.colab" in sys.modules' in setup and "pip" in setup
    assert setup.index("if IN_COLAB:") < setup.index("pip")


def test_quickstart(tmp_path, monkeypatch):
    nb = run_notebook("quickstart.ipynb", {"WORK_DIR": str(tmp_path), "TOP_K": 3}, monkeypatch)
    assert_no_errors(nb)
    out = text_output(nb)
    folder = tmp_path / "tiny-random-reranker"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert f"model folder: {folder}" in out
    # The rank() table: a header and TOP_K rows, ranks 1..3 with distinct input indices.
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["rank", "index", "score", "document"])
    rows = [line.split() for line in lines[header + 2 : header + 5]]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    indices = [int(r[1]) for r in rows]
    assert len(set(indices)) == 3 and all(0 <= i < 6 for i in indices)
    scores = [float(r[2]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # predict(normalize=True): one row per document, normalized in (0, 1).
    pred = next(i for i, line in enumerate(lines) if line.split()[:3] == ["index", "raw", "normalized"])
    normalized = [float(line.split()[2]) for line in lines[pred + 1 : pred + 7]]
    assert len(normalized) == 6 and all(0 < p < 1 for p in normalized)


def test_end_to_end(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    values = {"RUN_DIR": str(run_dir), "GRPO_STEPS": 2, "SCORE_STEPS": 2, "EVAL_TOP_K": 10}
    nb = run_notebook("end_to_end.ipynb", values, monkeypatch)
    assert_no_errors(nb)
    out = text_output(nb)

    # Both stages ran the injected step counts and wrote their summaries.
    for stage in ("grpo", "score"):
        summary = json.loads((run_dir / stage / "summary.json").read_text())
        assert summary["steps"] == 2
    # Stage 2 logged its loss and at least one validation nDCG@10 (for the curve).
    from prorank_jax.training import read_metrics

    score_rows = read_metrics(run_dir / "score")
    assert any("loss" in r for r in score_rows) and any("eval/ndcg@10" in r for r in score_rows)
    grpo_rows = read_metrics(run_dir / "grpo")
    assert any("kl" in r for r in grpo_rows) and any("reward" in r for r in grpo_rows)

    # The nDCG@10 table: BM25 and both rerankers.
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("system") and "nDCG@10" in line)
    table = {line.split("  ")[0].strip(): line for line in lines[header + 2 : header + 5]}
    assert set(table) == {"BM25", "stage 1 (GRPO)", "stage 2 (score)"}
    for sub in ("grpo", "score"):
        assert (run_dir / "eval" / sub / "metrics.json").is_file()

    # The training curves: shown inline and saved as a PNG.
    png = run_dir / "training_curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))

    # The export: an HF folder with config.json and weights, self-checked.
    export = run_dir / "export"
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()
    assert "self-check:" in out
