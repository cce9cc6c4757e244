"""The devices as the controller knows them, all in one package.

``ingest`` takes what devices publish (status, telemetry, events) off MQTT and batches it;
``registry`` (``DeviceRegistry``) writes each batch and answers the device pages; ``rows`` is
the column-by-column copying between reports and ORM rows; ``metrics`` exports the fleet's
per-device figures to Prometheus at scrape time.
"""
