"""RSS 2.0 and Atom 1.0 feeds: adapter.py (the feed files and the routes that serve them)."""
