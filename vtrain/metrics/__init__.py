"""Metrics the papers report that torchmetrics does not compute their way (COCO AP against the
annotation file)."""
