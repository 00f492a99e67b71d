"""edge-agent: on-device TFLite inference daemon publishing predictions over MQTT and serial."""

__version__ = "0.1.0"
