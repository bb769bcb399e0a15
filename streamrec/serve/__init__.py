"""``streamrec serve``: the inference worker, the app core shared with the cluster, the
HTTP/WebSocket server, its routes, Prometheus metrics and the browser page."""
