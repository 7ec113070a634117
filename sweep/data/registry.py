"""The dataset registry: every dataset's name, loader, metrics and data option, in one place and torch-free.

The single source of dataset names and metric names: `load_dataset` (sweep.data.base) imports the loader
named here, each `Dataset` reports the metrics named here (`Dataset.metrics`), the study spec checks its
`dataset.name`, its `dataset.path` and takes its default `metric` from here, and `odyssey train` lists the
datasets and says what `--data` must point at. Torch-free (the spec and `odyssey study list` import it); a
loader is a "module:function" string imported on first use, so one dataset's code never slows another.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: `loader` ("module:function" taking the options as keywords, `path` among them),
    `metrics` (every metric it reports, lower is better, the primary one first), and what its `path`
    option names (`path`: None when it takes none; `path_required`: whether it has no bundled copy)."""

    name: str
    title: str
    loader: str
    metrics: tuple[str, ...]
    path: str | None = None
    path_required: bool = False

    @property
    def metric(self) -> str:
        """The primary metric: a study's default `metric`, the one early stopping watches."""
        return self.metrics[0]


DATASETS: dict[str, DatasetEntry] = {
    d.name: d
    for d in (
        DatasetEntry("jsb", "JSB Chorales (Boulanger-Lewandowski et al. 2012)", "sweep.data.music:load_jsb",
                     ("nll",), path="a JSON file of chorales (default: the packaged copy)"),
        DatasetEntry("ptb", "Penn Treebank words", "sweep.data.text:load_ptb", ("perplexity", "nll"),
                     path="a directory holding ptb.train/valid/test.txt", path_required=True),
        DatasetEntry("char", "characters of a text file", "sweep.data.text:load_char",
                     ("bpc", "perplexity", "nll"), path="a UTF-8 text file", path_required=True),
        DatasetEntry("synthetic", "running sum of short random sequences (for tests)",
                     "sweep.data.synthetic:load_synthetic", ("mse",)),
    )
}
"""Dataset name -> its entry, in the order the help and the messages list them."""
