"""WeChat Official Account: adapter.py (cover, images, draft, free publish), standin.py (its cgi-bin API)."""
