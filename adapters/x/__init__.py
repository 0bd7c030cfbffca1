"""X (Twitter): adapter.py (posts through tweepy), standin.py (its v2 API for the sandbox)."""
