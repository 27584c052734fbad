"""The notebooks run top to bottom on the embedded synthetic data, so they cannot rot.

Executed with nbclient on a Jupyter kernel. nbclient, nbformat and ipykernel come with the `test` extra; the
test is skipped (saying which is missing) only when one of them is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0[12]_*.ipynb"))
MISSING = [m for m in ("nbformat", "nbclient", "ipykernel") if importlib.util.find_spec(m) is None]


def test_both_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_data_and_labels.ipynb", "02_rounds.ipynb"]


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"executing notebooks needs {', '.join(MISSING)} "
                                          "(pip install nbformat nbclient ipykernel)")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    """`RFCX_NOTEBOOK_DIR` puts the notebook's data and workspace under pytest's tmp_path: a notebook run by
    hand keeps its temporary folder for the user to look at, a test run must not leave ~300 MB in /tmp."""
    import nbformat
    from nbclient import NotebookClient

    (tmp_path / "work").mkdir()
    monkeypatch.setenv("RFCX_NOTEBOOK_DIR", str(tmp_path / "work"))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name} displayed no figure"
    assert any((tmp_path / "work").iterdir()), "the notebook ignored RFCX_NOTEBOOK_DIR"
