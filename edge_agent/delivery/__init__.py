"""Delivery of models to boards: bundle format, keys, manifest, model store, transfers and the update
protocol; shared by the host tools and the board (no TensorFlow here)."""
