"""The running sidecar: the ASGI app frps calls, the live policy store and its watcher, the
decision log, metrics, status and settings. Decides through `policyd.engine` only."""
