"""Variants: a recipe planned into work items, each built into what its runtime is handed (`built.Built`:
an in-memory torch model, a GGUF file, a saved checkpoint, or a model a server serves itself), with storage
accounting, the kernels observed and the distance to the unmodified model."""
