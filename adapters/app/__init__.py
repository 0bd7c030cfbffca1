"""The newsroom's app: adapter.py (content API + JPush announcement), standin.py (JPush's REST API v3)."""
