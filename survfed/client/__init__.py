"""The hospital site: data catalogue, caching, ClientApp handlers, ``survfed-client``."""
