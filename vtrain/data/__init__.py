"""Data sets in their standard on-disk formats, transforms, LightningDataModules and the tiny-data builder."""
