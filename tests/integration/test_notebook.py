"""jobs/quickstart.ipynb, top to bottom, in a fresh kernel: the walkthrough cannot rot."""

from __future__ import annotations

import os

import pytest

from tests.conftest import make_tiny_model
from tests.integration.raynodes import ROOT

pytestmark = pytest.mark.integration


def test_the_notebook_runs_top_to_bottom(tmp_path, ray_cluster):
    """jobs/quickstart.ipynb, executed by nbclient on tiny settings in a fresh kernel, so that the
    walkthrough cannot rot; every cell's output is checked for errors by nbclient. The kernel finds the
    session's cluster through RAY_ADDRESS, as a notebook on a cluster's head node does (commands that
    start a cluster of their own: tests/integration/test_cli_local.py)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "jobs" / "quickstart.ipynb", as_version=4)
    env = {"LMFORGE_NOTEBOOK_TINY": "1", "LMFORGE_NOTEBOOK_RUN": str(tmp_path / "run"), "RAY_ADDRESS": ray_cluster,
           "LMFORGE_NOTEBOOK_MODEL": str(make_tiny_model(tmp_path / "hf"))}  # imported in SmolLM2's place
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "int8 agreement" in outputs and (tmp_path / "run" / "onnx" / "adapters" / "nq").is_dir()
    for line in ("tuned NQ-open F1:", "scratch NQ-open F1:", "canary mean exposure", "tuned vs base, NQ-open f1:",
                 "[tuned] who painted the mona lisa ->"):
        assert line in outputs, line  # imported, adapted, exported with its adapter, scored, asked
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert images  # the loss curve
