"""The torch-free core every package may import: error types, trial states, the variant registry.

Nothing here imports torch, Optuna, SQLAlchemy or another odyssey package (tests/test_borders.py); pydantic
and numpy serve the training settings (`settings`) and the search-space parameter with its scales (`space`).
"""
