"""Everything MQTT, and the only place paho-mqtt is imported (in mqtt.client).

  client.py        MqttClient: paho behind plain callbacks and results (Delivery); the only paho import
  publisher.py     MqttPublisher: the board's connection (status, Last Will, state, requests, predictions)
  spool.py         the disk spool: a bounded SQLite FIFO of outgoing messages
  spool_sender.py  the thread that moves predictions through the spool to the publisher
  listener.py      MqttListener: the workstation tools' client (demo, bench, push, rollback, fleet)
  homeassistant.py Home Assistant device-based discovery payloads (a pure builder: no paho, no I/O)
"""
