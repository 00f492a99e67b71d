"""Views: what a person or a scraper sees of the pipelines, without holding any of them up.

  source → preprocess → runtime → decode → interpret → outputs
                                                        ├─ sinks (MQTT, serial, stdout)
                                                        └─ views (this package)

  tap.py        the hand-off from a pipeline: the newest frame (an image copy, its decoded result,
                its track ids), kept only while someone watches or asked for a snapshot; newest wins
  drawing.py    OpenCV overlays: boxes, labels, scores, track ids, poses, masks, zones, timestamp
  snapshots.py  JPEG snapshots, and the MQTT side: snapshot/get requests (rate-limited), periodic
                snapshots, the best frame of each tracked label (retained)
  latency.py    per-frame latency histograms cheap enough for every frame (no lock)
  metrics.py    /metrics through prometheus_client (imported at the first scrape), read at scrape time
  access.py     who may use the HTTP server: token (constant-time compare), TLS with client certificates
  http_server.py the local HTTP server (the standard library's ThreadingHTTPServer): bounded
                connections, TLS, stop
  http_handler.py one request per connection: bounded head, GET/HEAD, the routes, live MJPEG
  status_page.py the status page's HTML (no external assets)
  benchmark.py  `python -m edge_agent.views.benchmark`: what the server costs, idle and with a viewer

Drawing and JPEG encoding run on the threads of whoever looks (an HTTP connection, the snapshot
worker), never on a pipeline's; a pipeline only copies a frame for the views while they want one.
"""
