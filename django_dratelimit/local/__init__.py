"""The in-memory engine: the counter store, the algorithms, bucket scopes and budgets.

No network and no Django settings here: the request path (``limiter``) and the
sync (``sync``) both build on it, and it imports neither.
"""
