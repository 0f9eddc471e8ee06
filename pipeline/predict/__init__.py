"""Predict before you measure: decode and prefill speed and memory of a model x method on any hardware from the
roofline (bytes and FLOPs per token against a device's bandwidth and matrix peak), with per-engine efficiency
factors fitted from this project's own measurements.

`hardware` (the device table), `formats` (bits per weight of each method), `roofline_model` (the arithmetic),
`calibration` (fitting the factors from measured points), `command` (`shrinkgate predict`).
"""
