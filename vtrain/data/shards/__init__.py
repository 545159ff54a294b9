"""Data sets as webdataset tar shards, read by sample index (see docs/data.md for why this format).

    python -m vtrain.data.shards imagenet --root data/imagenet --out data/imagenet_shards
    python -m vtrain experiment=vit_s16_imagenet data.format=shards data.root=data/imagenet_shards

:mod:`~vtrain.data.shards.convert` writes them, :mod:`~vtrain.data.shards.format` defines the directory and
reads it, :mod:`~vtrain.data.shards.datasets` puts the shards behind the folder readers' interfaces.
"""
