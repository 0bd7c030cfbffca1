"""The newsroom's own website: adapter.py (static pages, indexes, sitemap) and templates/."""
