"""Generated wire code (protos/generate.py) and its private descriptor pool."""
