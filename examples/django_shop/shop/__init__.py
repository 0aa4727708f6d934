"""The example shop of examples/shop.py, on Django (see settings.py for apiguard's set-up)."""
