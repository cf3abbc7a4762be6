"""The operator's side: Prometheus metrics and the live admin page.

Nothing here runs on the request path: the collector reads counters at scrape
time, the admin page asks the cluster only while someone has it open.
"""
