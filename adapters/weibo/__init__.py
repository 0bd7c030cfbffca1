"""Weibo: adapter.py (statuses/share with text and cover), standin.py (its API for the sandbox)."""
