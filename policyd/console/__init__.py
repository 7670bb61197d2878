"""policyd's web console at /ui: what is deciding and why, a playground, and safe policy edits.

`create_console()` builds the ASGI app the service mounts; `ConsoleFeed` is the ring the plugin
route feeds. Pages are static files under `static/`; docs/console.md describes them and the APIs.
"""
