"""One function per mode of `python -m vtrain` (`mode=train`, `eval`, `predict`, `browse`, `flops`,
`lr_find`), each in its own file; the pieces they share (building a run from its config, reading
checkpoints against it) in `common`."""
