"""Partner platforms (人民号, 上观号 and the like): adapter.py (signed JSON push), standin.py (their API)."""
