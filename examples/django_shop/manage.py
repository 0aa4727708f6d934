#!/usr/bin/env python
"""The Django example shop: python manage.py runserver (or any WSGI/ASGI server on
shop.wsgi:application / shop.asgi:application)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
