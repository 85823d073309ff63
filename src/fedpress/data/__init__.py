"""Datasets in memory as tensors, read from their original files, and client partitions.

    ds = load("mnist")                                   # verified files -> tensors
    parts = partition("dirichlet", ds.y_train, 100, seed, alpha=0.5)  # a Partition: parts[c], len(parts)
    print(summary(parts, ds.y_train, ds.num_classes))

Files are looked for in ``$FEDPRESS_DATA`` (cache), ``$FEDPRESS_MIRROR`` (a local
mirror of the original files), then downloaded; each is md5-checked.
`list_datasets`, `fetch` and `verify` back the ``fedpress datasets`` command.
"""

from fedpress.data.loaders import Dataset, dataset_names, load
from fedpress.data.partition import (
    Partition,
    class_counts,
    contiguous,
    dirichlet,
    iid,
    iid_replacement,
    lda_equal,
    partition,
    plot_summary,
    power_law,
    shards,
    summary,
)
from fedpress.data.sources import (
    DatasetError,
    DatasetWarning,
    FileCheck,
    fetch,
    list_datasets,
    verify,
)

__all__ = [
    "Dataset",
    "DatasetError",
    "DatasetWarning",
    "FileCheck",
    "Partition",
    "class_counts",
    "contiguous",
    "dataset_names",
    "dirichlet",
    "fetch",
    "iid",
    "iid_replacement",
    "lda_equal",
    "list_datasets",
    "load",
    "partition",
    "plot_summary",
    "power_law",
    "shards",
    "summary",
    "verify",
]
