"""Events: rules that turn a camera's smoothed labels into events, their clips and thumbnails,
the events and notification outbox in the history database, and webhook and MQTT delivery."""
