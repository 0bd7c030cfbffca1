"""Generic webhook channel: adapter.py (the channel), standin.py (a receiver for the sandbox)."""
