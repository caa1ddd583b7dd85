"""THE feature definitions shared by training (whole history) and the stream (one event at a time).

Offline code drives the same per-event step functions the stream calls, in event-time order, so
a model never sees a feature the worker computes differently. numpy only: no pandas, no keras.
"""
