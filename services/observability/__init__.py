"""What a running Leveret tells its operators: logs, traces, metrics, and the redaction
that keeps passwords out of all three.

- `logs`: structlog configured once per process, one JSON line per handled message, and
  its parts: `message_fields` (the handled message's fields in every event), `formatting`
  (`StructuredFormatter`), `json_lines` (the fast JSON line), `stderr` (the buffered handler);
- `tracing`: OpenTelemetry spans and trace headers (the ``tracing`` extra);
- `metrics`: Prometheus counters and histograms on the worker's health port;
- `redaction`: passwords out of URLs and error text, control characters out of output;
- `defaults`: the middleware every broker runs first (tracing).
"""
