"""The C++ kernels of the recurrent cells (`sweep/csrc/lstm_family.cpp`): `load`, from `sweep.kernels`.

`sweep.kernels` builds the C++ source once per machine and loads it. Which layer runs on these kernels is
decided by `sweep.cells_base.KERNELS` (and `ODYSSEY_CELLS_BACKEND`); the autograd Functions that call them
sit next to each family's equations (`sweep.cells_lstm`, `sweep.cells_gru`, `sweep.cells_pseudo`).
"""

from __future__ import annotations

from sweep.kernels import load

__all__ = ["ENV_VAR", "load"]

#: names the kernel every cell should use: auto | cpp | compiled | reference (`sweep.cells_base`)
ENV_VAR = "ODYSSEY_CELLS_BACKEND"
