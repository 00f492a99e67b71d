"""The daemon: wires sources, runtime, postprocessing and sinks into running pipelines."""
