"""The django-dratelimit demo project: demo pages for newcomers, cluster endpoints for tests."""
