"""Predict before you measure: decode and prefill speed and memory of a model x method on any hardware from the
roofline (bytes and FLOPs per token against a device's bandwidth and matrix peak), with per-runtime efficiency
factors fitted from this project's own measurements.

`hardware` (the device table), `formats` (bits per weight of each method), `roofline` (the arithmetic),
`fit` (fitting the factors to measured points), `targets` (what `shrinkgate predict` predicts for, and its table).
Model shapes come from `pipeline.models.shapes`, host facts from `pipeline.host`; no torch is imported here.
"""
