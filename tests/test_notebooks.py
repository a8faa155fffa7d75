"""Every notebook in notebooks/ executes top to bottom without error (nbclient).

One kernel serves them all (its start and the imports are most of a notebook's time): before
each notebook the kernel's namespace is reset and it moves to a fresh folder, so a notebook that
forgot an import or relied on another's variables still fails."""

from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def kernel():
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    yield manager
    manager.shutdown_kernel(now=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, kernel):
    notebook = nbformat.read(path, as_version=4)
    fresh = nbformat.v4.new_code_cell(
        f"get_ipython().run_line_magic('reset', '-f')\nimport os\nos.chdir({str(tmp_path)!r})\n"
        "del os")
    notebook.cells.insert(0, fresh)
    NotebookClient(notebook, km=kernel, timeout=300, kernel_name="python3").execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert (tmp_path / "runs").is_dir()  # each ran in its own folder
