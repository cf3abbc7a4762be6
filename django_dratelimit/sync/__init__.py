"""The cluster sync: protocol v2 (``protocol``, ``keys``), the node and its handlers
(``node``, ``handlers``, ``peers``, ``answers``), the thread (``thread``), the layer
helpers (``layers``) and the counters (``metrics``).

Nothing on the request path imports this package when it is imported: the limiter
starts the thread lazily (``thread.start_sync``) at the first request. It is empty
on purpose, so the operator tools can import ``sync.protocol`` without the node.
"""
