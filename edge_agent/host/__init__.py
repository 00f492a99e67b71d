"""Workstation tools: convert Keras/SavedModel to TFLite, validate, check Edge TPU readiness, bundle.

The only package that imports TensorFlow, and only inside the functions that need it
(`edge_agent.host.tensorflow_loader.import_tensorflow`); bundles, keys and the Edge TPU
readiness analysis work without it.
"""
