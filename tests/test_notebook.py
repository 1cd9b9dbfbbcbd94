"""Executes experiments/notebooks/drift_field.ipynb top to bottom and checks its figures."""

import os
import pathlib
import sys

import nbclient
import nbformat
from ipykernel import kernelspec

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "notebooks" / "drift_field.ipynb"
KERNEL = "lookahead-drift-notebook-test"
NUM_FIGURES = 4  # field, lookahead chain, term RMS, training


def _write_kernelspec(jupyter_dir: pathlib.Path) -> None:
  """A kernel for this interpreter that finds the package from the repository root."""
  pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
  kernelspec.write_kernel_spec(
      jupyter_dir / "kernels" / KERNEL,
      overrides={
          "argv": kernelspec.make_ipkernel_cmd(executable=sys.executable),
          "display_name": KERNEL,
          # Headless: the inline backend renders PNGs into the outputs (Agg underneath); a
          # global MPLBACKEND=Agg would suppress them.
          "env": {"PYTHONPATH": pythonpath,
                  "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
      })


def test_notebook_runs_and_draws_its_figures(tmp_path, monkeypatch):
  jupyter_dir = tmp_path / "jupyter"
  _write_kernelspec(jupyter_dir)
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter_dir))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in nb.cells:  # judge this run's outputs, not the committed ones
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None

  # Raises CellExecutionError (naming the cell) if any cell fails; timeout is per cell.
  nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                          resources={"metadata": {"path": str(ROOT)}}).execute()

  code_cells = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code_cells)
  errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
  assert not errors, errors
  pngs = [o for c in code_cells for o in c.outputs
          if o.output_type == "display_data" and "image/png" in o.get("data", {})]
  assert len(pngs) == NUM_FIGURES, f"expected {NUM_FIGURES} figures, got {len(pngs)}"
  assert all(len(o.data["image/png"]) > 10_000 for o in pngs)  # base64 of a real picture
  text = "".join(o.get("text", "") for c in code_cells for o in c.outputs
                 if o.output_type == "stream")
  assert "energy distance at step" in text
